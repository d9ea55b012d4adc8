"""MochiDiT as a diffusers model: construction from diffusers' arguments, save/load (subfolder, variant, dtype),
MochiPipeline with our transformer (frames, save and reload), the LoRA adapter API, layerwise casting, offload hooks
and gradient checkpointing's switch, each against diffusers' own MochiTransformer3DModel (seconds on 2 CPU cores)."""
import copy, json
from dataclasses import asdict, replace
import pytest, torch
from diffusers import MochiPipeline, MochiTransformer3DModel
from diffusers.utils import logging as diffusers_logging
from fastvideo import toy
from fastvideo.config import preset
from fastvideo.dit import MochiDiT, randomize_parameters

CFG = replace(preset("toy").dit, num_layers=2)
# the targets of a full LoRA: every Linear and the patch embedding's conv (the fused paths must all fall back)
ALL_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj", "add_q_proj", "to_add_out",
               "ff.net.0.proj", "ff.net.2", "proj", "linear"]


@pytest.fixture(autouse=True)
def quiet_diffusers():
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # "Expected types for transformer", "kept in float32": known, said in the lesson
    yield
    diffusers_logging.set_verbosity(level)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    ref = randomize_parameters(MochiTransformer3DModel(**asdict(CFG)), seed=3).eval()
    ours = MochiDiT(**asdict(CFG)).eval()
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, CFG.in_channels, 2, 4, 4, generator=g)
    text = torch.randn(2, 6, CFG.text_embed_dim, generator=g)
    mask = torch.ones(2, 6, dtype=torch.long); mask[1, 3:] = 0
    return latents.to(dtype), text.to(dtype), torch.tensor([300.0, 700.0]), mask


def run(model, **kwargs):
    with torch.no_grad(): return model(*inputs(model.dtype), **kwargs).sample


def rel(a, b): return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def test_constructor_and_config_are_diffusers(pair):
    ours, ref = pair
    assert ours.config == ref.config and ours.config["in_channels"] == CFG.in_channels
    model = MochiDiT(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=1, in_channels=4,
                     pooled_projection_dim=16, text_embed_dim=32, time_embed_dim=4)
    theirs = MochiTransformer3DModel(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=1, in_channels=4,
                                     pooled_projection_dim=16, text_embed_dim=32, time_embed_dim=4)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert model.config.num_layers == 1 and MochiDiT.from_config(model.config).config == model.config
    with pytest.raises(ValueError, match="qk_norm='layer_norm' is not Mochi's"): MochiDiT(qk_norm="layer_norm")


def test_bf16_load_of_fp32_weights_subfolder_variant_and_shards(pair, tmp_path):
    ours, ref = pair
    ref.save_pretrained(tmp_path / "model" / "transformer", variant="ema", max_shard_size="50KB")
    assert len(list((tmp_path / "model" / "transformer").glob("*.ema-*.safetensors"))) > 1
    half = MochiDiT.from_pretrained(tmp_path / "model", subfolder="transformer", variant="ema", torch_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.proj_out.weight.dtype == torch.bfloat16
    assert half.pos_frequencies.dtype == torch.float32  # kept: angles from bf16 frequencies are off by a fraction of a turn
    also = MochiDiT.from_pretrained(tmp_path / "model", variant="ema", dtype=torch.bfloat16)  # `dtype` too; root found
    assert also.dtype == torch.bfloat16
    for kwargs in ({"device_map": "cpu"}, {"low_cpu_mem_usage": False}):  # accelerate's placement; plain init + load
        other = MochiDiT.from_pretrained(tmp_path / "model", subfolder="transformer", variant="ema", **kwargs)
        assert all(torch.equal(other.state_dict()[k], v) for k, v in ref.state_dict().items()), kwargs
    ours.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["num_layers"] == CFG.num_layers
    theirs = MochiTransformer3DModel.from_pretrained(tmp_path / "ours")
    assert all(torch.equal(theirs.state_dict()[k], v) for k, v in ref.state_dict().items())


def test_pipeline_with_our_transformer_equals_diffusers_and_round_trips(tmp_path):
    root = toy.model_path()
    pipe = MochiPipeline.from_pretrained(root, transformer=MochiDiT.from_pretrained(root, subfolder="transformer"))
    ref_pipe = MochiPipeline.from_pretrained(root)
    assert type(ref_pipe.transformer) is MochiTransformer3DModel and type(pipe.transformer) is MochiDiT
    kw = dict(prompt="a red circle", num_frames=7, height=32, width=32, num_inference_steps=3, guidance_scale=4.5,
              output_type="np", max_sequence_length=16)
    ours = pipe(generator=torch.Generator().manual_seed(0), **kw).frames
    theirs = ref_pipe(generator=torch.Generator().manual_seed(0), **kw).frames
    assert ours.shape == (1, 7, 32, 32, 3) and abs(ours - theirs).max() <= 1e-5
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["transformer"] == ["fastvideo.dit", "MochiDiT"]
    reloaded = MochiPipeline.from_pretrained(tmp_path)
    assert type(reloaded.transformer) is MochiDiT
    assert (reloaded(generator=torch.Generator().manual_seed(0), **kw).frames == ours).all()


def test_lora_api_matches_diffusers(pair, tmp_path):
    from peft import LoraConfig
    base_ours, base_ref = pair
    ours, ref = copy.deepcopy(base_ours), copy.deepcopy(base_ref)
    base = run(ours)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=ALL_TARGETS, init_lora_weights=False)
    ours.add_adapter(config, "style"); ref.add_adapter(config, "style")
    ref.load_state_dict(ours.state_dict())  # the same random adapter in both
    lora = run(ours)
    assert rel(lora, base) > 0.1 and (lora - run(ref)).abs().max() <= 1e-5
    assert (run(ours, attention_kwargs={"scale": 0.0}) - base).abs().max() <= 1e-5
    half = run(ours, attention_kwargs={"scale": 0.5})
    assert (half - run(ref, attention_kwargs={"scale": 0.5})).abs().max() <= 1e-5 and rel(half, lora) > 0.01
    assert (run(ours) - lora).abs().max() == 0  # the scale is undone after the call
    ours.set_adapters(["style"], weights=[0.5]); assert (run(ours) - half).abs().max() <= 1e-6
    ours.set_adapters(["style"], weights=[1.0])
    ours.disable_adapters(); assert (run(ours) - base).abs().max() <= 1e-5
    ours.enable_adapters()
    ours.save_lora_adapter(tmp_path, adapter_name="style")
    ours.fuse_lora(); assert (run(ours) - lora).abs().max() <= 1e-5
    ours.unfuse_lora(); assert (run(ours) - lora).abs().max() <= 1e-5
    fresh = copy.deepcopy(base_ours)
    fresh.load_lora_adapter(tmp_path, weight_name="pytorch_lora_weights.safetensors", adapter_name="style", prefix=None)
    assert (run(fresh) - lora).abs().max() <= 1e-5


def test_layerwise_casting_fp8_storage_bf16_compute(pair):
    "fp8 storage of every Linear (norms and the patch embedding skipped), bf16 compute: close to the bf16 model."
    ours, ref = pair
    bf16 = copy.deepcopy(ours).to(torch.bfloat16)
    fp8 = copy.deepcopy(ours).to(torch.bfloat16)
    fp8.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    assert fp8.transformer_blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert fp8.patch_embed.proj.weight.dtype == fp8.transformer_blocks[0].norm1.linear.weight.dtype == torch.bfloat16
    theirs = copy.deepcopy(ref).to(torch.bfloat16)
    theirs.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    out = run(fp8)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert rel(out, run(bf16)) < 0.2      # e4m3's 3 mantissa bits: ~9% measured on this random model
    assert rel(out, run(theirs)) < 0.03   # diffusers' model cast the same way: ~1% apart (bf16 rounding)


@pytest.mark.parametrize("how", ["accelerate_cpu_offload", "group_offload_leaf", "group_offload_block"])
def test_offload_hooks_see_every_weight(pair, how, tmp_path):
    """accelerate's cpu_offload keeps weights on meta, group offload to disk keeps empty tensors, until each module's
    hook brings them in: a fused path reading a hooked layer's weights itself would fail or give garbage (leaf level;
    block level hooks whole blocks, inside which direct reads are right)."""
    ours, _ = pair
    model = copy.deepcopy(ours)
    if how == "accelerate_cpu_offload":
        from accelerate import cpu_offload
        cpu_offload(model, execution_device="cpu")
        assert model.transformer_blocks[0].attn1.to_q.weight.device.type == "meta"
    else:
        from diffusers.hooks import apply_group_offloading
        kind = how.removeprefix("group_offload_") + "_level"
        apply_group_offloading(model, onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                               offload_type=kind, offload_to_disk_path=str(tmp_path),
                               **({"num_blocks_per_group": 1} if kind == "block_level" else {}))
    assert (run(model) - run(ours)).abs().max() <= 1e-5


def test_gradient_checkpointing_switch_maps_onto_checkpoint_ratio(pair):
    ours, _ = pair
    model = copy.deepcopy(ours).train()
    calls = []
    def counting(block, *args):
        calls.append(block)
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
    assert not model.is_gradient_checkpointing
    model.enable_gradient_checkpointing(gradient_checkpointing_func=counting)
    assert model.is_gradient_checkpointing and model.checkpoint_ratio == 1.0
    model(*inputs()).sample.square().mean().backward()
    assert len(calls) == CFG.num_layers  # every block ran through the given function
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True); model.disable_gradient_checkpointing()
    assert model.checkpoint_ratio == 0.0 and not model.is_gradient_checkpointing
    model(*inputs()).sample.square().mean().backward()
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters() if p.grad is not None)
    model.checkpoint_ratio = 0.5  # after a disable: our own (non-reentrant) checkpointing again, not the one given
    assert model.is_gradient_checkpointing
    model.zero_grad(set_to_none=True); calls.clear()
    model(*inputs()).sample.square().mean().backward()
    assert not calls and all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters() if p.grad is not None)


def test_lora_scale_holds_in_recomputed_blocks(pair):
    "A checkpointed block is recomputed after forward undid the LoRA scale: its gradients must still be at that scale."
    from peft import LoraConfig
    ours, _ = pair
    model = copy.deepcopy(ours).train()
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=ALL_TARGETS, init_lora_weights=False))
    results = []
    for ratio in (0.0, 1.0):
        model.zero_grad(set_to_none=True); model.checkpoint_ratio = ratio
        model(*inputs(), attention_kwargs={"scale": 0.5}).sample.square().mean().backward()
        results.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert results[0].keys() == results[1].keys()
    for n, g in results[0].items(): assert (results[1][n] - g).abs().max() <= 1e-5 * g.abs().max() + 1e-8, n


def test_save_over_the_other_format_and_loading_info(pair, tmp_path):
    "A .bin save over a safetensors one must not leave the old safetensors (it would win on load); loading info works."
    import inspect
    from diffusers import AutoModel
    ours, ref = pair
    first = randomize_parameters(copy.deepcopy(ours), seed=7)
    first.save_pretrained(tmp_path)
    ours.save_pretrained(tmp_path, safe_serialization=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "diffusion_pytorch_model.bin"]
    loaded, info = MochiDiT.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and all(torch.equal(loaded.state_dict()[k], v) for k, v in ref.state_dict().items())
    assert type(AutoModel.from_pretrained(str(tmp_path))) is MochiTransformer3DModel  # the folder names diffusers' class
    assert "use_flashpack" in inspect.signature(MochiDiT.save_pretrained).parameters  # a pipeline passes what it names
    half = MochiDiT.from_config(CFG, dtype=torch.bfloat16)
    assert half.proj_out.weight.dtype == torch.bfloat16 and half.pos_frequencies.dtype == torch.float32


def test_torch_compile_of_our_model_equals_eager(pair):
    "torch.compile once lost an out= write through a complex view (norm_rope): compiled outputs and grads must match."
    ours, _ = pair
    model = copy.deepcopy(ours).train()
    compiled = torch.compile(model)
    out = compiled(*inputs()).sample
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    eager = model(*inputs()).sample
    eager.square().mean().backward()
    assert (out - eager).abs().max() <= 1e-4
    for n, p in model.named_parameters():
        if p.grad is not None: assert (grads[n] - p.grad).abs().max() <= 1e-3 * p.grad.abs().max() + 1e-7, n


def test_genmo_single_file_round_trip_with_config_folder_and_dtype(pair, tmp_path):
    from safetensors.torch import save_file
    from fastvideo.dit import genmo_state_dict
    ours, ref = pair
    ref.save_pretrained(tmp_path / "transformer")
    save_file(genmo_state_dict(ours), tmp_path / "dit.safetensors")
    half = MochiDiT.from_single_file(tmp_path / "dit.safetensors", config=tmp_path / "transformer", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.pos_frequencies.dtype == torch.float32
    for k, v in ref.state_dict().items(): assert torch.equal(half.state_dict()[k], v.to(half.state_dict()[k].dtype)), k
    assert half.dit_config == CFG
    with pytest.raises(ValueError, match="dit.pt: expected genmo's single-file checkpoint, a .safetensors file"):
        MochiDiT.from_single_file(tmp_path / "dit.pt", config=CFG)
