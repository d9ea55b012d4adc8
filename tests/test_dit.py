"""MochiDiT against diffusers' MochiTransformer3DModel beyond the notebook's toy checks (seconds on 2 CPU cores)."""
import json
from dataclasses import asdict
import pytest, torch
from diffusers import MochiTransformer3DModel
from fastvideo.config import DiTConfig
from fastvideo.dit import MochiDiT, randomize_parameters, rope_positions

# odd sizes on purpose: 2 heads, text stream 24 wide, T5 stand-in 40 wide, 3 frames of 6 x 4 latent pixels
CFG = DiTConfig(num_attention_heads=2, attention_head_dim=16, num_layers=2, pooled_projection_dim=24,
                in_channels=12, out_channels=6, text_embed_dim=40, time_embed_dim=16, max_sequence_length=8)

@pytest.fixture(scope="module")
def pair():
    ref = randomize_parameters(MochiTransformer3DModel(**asdict(CFG)), seed=1).eval()
    ours = MochiDiT(**asdict(CFG))
    ours.load_state_dict(ref.state_dict())
    return ours, ref

def inputs(batch=2, lengths=(5, 0), tokens=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, CFG.in_channels, 3, 6, 4, generator=g)
    text = torch.randn(batch, tokens, CFG.text_embed_dim, generator=g)
    mask = torch.zeros(batch, tokens, dtype=torch.long)
    for i, n in enumerate(lengths): mask[i, :n] = 1
    return latents, text, torch.tensor([250.0, 875.0][:batch]), mask

def test_parity_outputs_and_input_grads(pair):
    ours, ref = pair
    latents, text, t, mask = inputs()
    a_in = [latents.clone().requires_grad_(), text.clone().requires_grad_()]
    b_in = [latents.clone().requires_grad_(), text.clone().requires_grad_()]
    a = ours(a_in[0], a_in[1], t, mask).sample
    b = ref(b_in[0], b_in[1], t, mask).sample
    assert a.shape == (2, 6, 3, 6, 4)
    assert (a - b).abs().max() <= 1e-5
    a.square().mean().backward(); b.square().mean().backward()
    for x, y in zip(a_in, b_in):
        assert (x.grad - y.grad).abs().max() <= 1e-4 * y.grad.abs().max()
    # padded caption tokens get exactly zero gradient
    assert torch.equal(a_in[1].grad[~mask.bool()], torch.zeros_like(a_in[1].grad[~mask.bool()]))

def test_scalar_timestep_and_tuple_output(pair):
    ours, ref = pair
    latents, text, _, mask = inputs(lengths=(8, 3))
    with torch.no_grad():
        (a,) = ours(latents, text, torch.tensor(500.0), mask, return_dict=False)
        b = ref(latents, text, torch.tensor([500.0, 500.0]), mask).sample
    assert (a - b).abs().max() <= 1e-5

def test_frame_offset_positions_are_global():
    full = rope_positions(5, 3, 4)
    assert torch.equal(rope_positions(2, 3, 4, frame_offset=3), full[3 * 12:])

def test_checkpointing_in_train_mode_matches(pair):
    ours, _ = pair
    latents, text, t, mask = inputs()
    results, calls, block = [], [], ours.transformer_blocks[0]
    block.forward = lambda *a, _f=block.forward: calls.append(1) or _f(*a)  # counts recomputation too (hooks do not)
    for ratio in (0.0, 0.5, 1.0):
        ours.zero_grad(set_to_none=True); ours.checkpoint_ratio = ratio
        calls.clear()
        ours(latents, text, t, mask).sample.sum().backward()
        assert len(calls) == (1 if ratio == 0 else 2), (ratio, len(calls))  # a checkpointed block 0 runs again in backward
        results.append({n: p.grad.clone() for n, p in ours.named_parameters() if p.grad is not None})
    del block.forward; ours.checkpoint_ratio = 0.0
    for r in results[1:]:
        assert r.keys() == results[0].keys() and all(torch.equal(r[k], results[0][k]) for k in r)

def test_model_folder_with_transformer_subfolder(pair, tmp_path):
    ours, ref = pair
    ours.save_pretrained(tmp_path / "model" / "transformer", max_shard_size="20KB")
    index = json.loads((tmp_path / "model/transformer/diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    config = json.loads((tmp_path / "model/transformer/config.json").read_text())
    assert config["_class_name"] == "MochiTransformer3DModel" and "_diffusers_version" in config  # diffusers' AutoModel reads it
    loaded = MochiDiT.from_pretrained(tmp_path / "model", torch_dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and loaded.dit_config == CFG
    for k, v in ref.state_dict().items():  # the RoPE frequencies stay fp32 (_keep_in_fp32_modules), the rest is bf16
        want = torch.float32 if k == "pos_frequencies" else torch.bfloat16
        assert torch.equal(loaded.state_dict()[k], v.to(want)), k

def test_missing_config_is_named(tmp_path):
    with pytest.raises(OSError, match="config.json"):
        MochiDiT.from_pretrained(tmp_path)

def test_lora_adapters_are_not_bypassed(pair):
    "The fused matmuls must fall back to module calls when a Linear is wrapped (peft LoRA)."
    peft = pytest.importorskip("peft")
    ours, _ = pair
    latents, text, t, mask = inputs()
    model = MochiDiT(**asdict(CFG)); model.load_state_dict(ours.state_dict())
    with torch.no_grad(): before = model(latents, text, t, mask).sample
    lora = peft.LoraConfig(r=4, target_modules=["to_q", "add_k_proj", "proj"], init_lora_weights=False)
    model = peft.inject_adapter_in_model(lora, model)
    with torch.no_grad(): after = model(latents, text, t, mask).sample
    assert not torch.allclose(before, after, atol=1e-3)
    for module in model.modules():  # LoRA's B set to zero: back to the base output
        if hasattr(module, "lora_B"):
            for lin in module.lora_B.values(): torch.nn.init.zeros_(lin.weight)
    with torch.no_grad(): zeroed = model(latents, text, t, mask).sample
    assert (zeroed - before).abs().max() <= 1e-5

def test_autocast_bf16_close_to_fp32(pair):
    "Under autocast the RoPE angles must stay fp32 (they reach ~100 radians); the output stays within 3% of fp32."
    ours, _ = pair
    latents, text, t, mask = inputs()
    with torch.no_grad():
        exact = ours(latents, text, t, mask).sample
        with torch.autocast("cpu", torch.bfloat16):
            approx = ours(latents, text, t, mask).sample
    assert approx.dtype == torch.bfloat16
    assert (approx.float() - exact).abs().max() <= 0.03 * exact.abs().max()

def test_batch_without_any_caption_trains(pair):
    "All captions empty: the text stream has zero tokens; forward and backward still match diffusers."
    ours, ref = pair
    latents, text, t, mask = inputs(lengths=(0, 0))
    ours.zero_grad(set_to_none=True); ref.zero_grad(set_to_none=True)
    a, b = ours(latents, text, t, mask).sample, ref(latents, text, t, mask).sample
    assert (a - b).abs().max() <= 1e-5
    a.square().mean().backward(); b.square().mean().backward()
    gb = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        if p.grad is None: continue
        # a single key makes the pool's softmax constant: its query grads are ~1e-10 noise in diffusers, 0 here
        assert (p.grad - gb[name].grad).abs().max() <= 1e-4 * gb[name].grad.abs().max() + 1e-8, name


def test_num_frames_without_sequence_parallelism(pair):
    "`num_frames` is the global latent frame count under SP; on one process it must be None or the frames given."
    ours, _ = pair
    latents, text, t, mask = inputs()
    with torch.no_grad():
        assert torch.equal(ours(latents, text, t, mask, num_frames=3).sample, ours(latents, text, t, mask).sample)
        with pytest.raises(ValueError, match="num_frames=5: without sequence parallelism it must be None or the 3 frames"):
            ours(latents, text, t, mask, num_frames=5)


def test_save_over_a_sharded_save_replaces_it(tmp_path):
    "A stale index.json from an earlier sharded save must not win over the new single-file weights."
    from fastvideo.dit import MochiDiT, randomize_parameters
    first = randomize_parameters(MochiDiT.from_config("toy"), seed=1)
    first.save_pretrained(tmp_path, max_shard_size=200_000)
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").exists()
    second = randomize_parameters(MochiDiT.from_config("toy"), seed=2)
    second.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = MochiDiT.from_pretrained(tmp_path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in second.state_dict().items())

def test_gpu_block_bench_runs_on_cpu():
    "The prepared GPU check (bench/dit_gpu_block.py) must not rot between GPU sessions: its CPU smoke run works and agrees."
    import re, subprocess, sys
    from pathlib import Path
    script = Path(__file__).parents[1] / "bench" / "dit_gpu_block.py"
    done = subprocess.run([sys.executable, str(script), "--device", "cpu", "--tiny", "--repeats", "1", "--warmup", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    err = float(re.search(r"\(outputs\): ([0-9.e+-]+)", done.stdout).group(1))
    assert err < 1e-5, done.stdout
    assert "forward+backward: ours" in done.stdout and "speed-up" in done.stdout, done.stdout
