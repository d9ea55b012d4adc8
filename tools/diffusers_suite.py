"""Run diffusers' own Mochi test files against `fastvideo.dit.MochiDiT`, from a copy outside this repository.

    python tools/diffusers_suite.py --git-dir PATH/TO/diffusers/.git [--commit REV] [--out /tmp/diffusers_suite]

It exports `tests/` of a diffusers checkout (at REV, default HEAD) into OUT twice: A unchanged, B with `MochiDiT`
imported from `fastvideo.dit` wherever `MochiTransformer3DModel` stands in the three Mochi test files (model,
pipeline, LoRA), nothing else changed. The tiny T5 the pipeline tests download (`hf-internal-testing/tiny-random-t5`)
is stood in by a local random one of the same shape (OUT/tiny-random-t5), in both variants. Then it runs pytest on
each variant (CPU, one process), writes OUT/A.outcomes and OUT/B.outcomes (`nodeid OUTCOME`), prints the counts
and every test that passes in A and not in B (the drop-in claim: that list is empty). Needs the network only to
get the diffusers checkout; nothing here is part of `make test`.
"""
import argparse, os, re, subprocess, sys, textwrap
from collections import Counter
from pathlib import Path

FILES = ["tests/models/transformers/test_models_transformer_mochi.py", "tests/pipelines/mochi/test_mochi.py",
         "tests/lora/test_lora_layers_mochi.py"]
HUB_T5 = '"hf-internal-testing/tiny-random-t5"'

PLUGIN = textwrap.dedent('''
    import os
    _out = {}
    def pytest_runtest_logreport(report):
        outcome = ("XFAIL" if report.skipped else "XPASS") if hasattr(report, "wasxfail") else report.outcome.upper()
        if report.when == "call" or outcome != "PASSED":
            if _out.get(report.nodeid, "PASSED") == "PASSED": _out[report.nodeid] = outcome
    def pytest_sessionfinish(session):
        with open(os.environ["SUITE_OUTCOMES"], "w") as f:
            for k, v in sorted(_out.items()): f.write(f"{k} {v}\\n")
''')


def build_tiny_t5(folder: Path):
    "A random T5 encoder of tiny-random-t5's shape and a 1100-token sentencepiece tokenizer, saved to `folder`."
    import io, sentencepiece as spm, torch
    from transformers import T5Config, T5EncoderModel, T5Tokenizer
    folder.mkdir(parents=True, exist_ok=True)
    words = [f"w{i}" for i in range(3000)] + ["a photo of a dance monkey", "a cat", "a dog"]
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(words * 2), model_writer=proto, model_type="unigram",
                                   vocab_size=1000, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1,
                                   minloglevel=2, hard_vocab_limit=False)
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    vocab = [(sp.id_to_piece(i), 0.0 if i < 3 else sp.get_score(i)) for i in range(sp.get_piece_size())]
    T5Tokenizer(vocab=vocab, extra_ids=100).save_pretrained(folder)  # at most 1100 ids: within the 1103 embeddings
    torch.manual_seed(0)
    config = T5Config(vocab_size=1103, d_model=32, d_ff=37, d_kv=8, num_layers=5, num_heads=4,
                      relative_attention_num_buckets=8, feed_forward_proj="relu", initializer_factor=0.002, dropout_rate=0.1,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)  # the hub model's init scale
    T5EncoderModel(config).save_pretrained(folder)


def export(git_dir: str, commit: str, out: Path, t5: Path):
    for variant in ("A", "B"):
        dest = out / variant
        if dest.exists(): subprocess.run(["rm", "-rf", str(dest)], check=True)
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "--git-dir", git_dir, "archive", commit, "tests"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        for rel in FILES:
            f = dest / rel
            if not f.exists(): continue
            text = f.read_text().replace(HUB_T5, f'"{t5}"')
            if variant == "B":  # the import substitution, nothing else
                lone = r"^from diffusers import MochiTransformer3DModel$"
                if re.search(lone, text, flags=re.M):
                    text = re.sub(lone, "from fastvideo.dit import MochiDiT", text, flags=re.M)
                else:  # one name among others: drop it there, import ours after the first such line
                    text = re.sub(r"^from diffusers import .*$", lambda m: re.sub(r",? MochiTransformer3DModel\b,?", lambda n:
                                  "," if n.group(0).startswith(",") and n.group(0).endswith(",") else "", m.group(0)),
                                  text, flags=re.M)
                    text = re.sub(r"^(from diffusers import .*)$", r"\1\nfrom fastvideo.dit import MochiDiT", text,
                                  count=1, flags=re.M)
                text = re.sub(r"\bMochiTransformer3DModel\b", "MochiDiT", text)
            f.write_text(text)


def run(out: Path, variant: str) -> dict:
    outcomes = out / f"{variant}.outcomes"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(out), "SUITE_OUTCOMES": str(outcomes)}
    files = [rel for rel in FILES if (out / variant / rel).exists()]
    with open(out / f"{variant}.log", "w") as log:
        subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "suite_outcomes", "-q", *files],
                       cwd=out / variant, env=env, stdout=log, stderr=subprocess.STDOUT)
    return dict(line.rsplit(" ", 1) for line in outcomes.read_text().splitlines() if line.strip())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--git-dir", required=True, help="a diffusers git directory (a clone's .git, or a bare mirror)")
    p.add_argument("--commit", default="HEAD")
    p.add_argument("--out", default="/tmp/diffusers_suite", help="where the copies go (outside this repository)")
    args = p.parse_args()
    out = Path(args.out).resolve()
    if Path(__file__).resolve().parents[1] in [out, *out.parents]: p.error(f"--out {out}: must be outside the repository")
    out.mkdir(parents=True, exist_ok=True)
    (out / "suite_outcomes.py").write_text(PLUGIN)
    t5 = out / "tiny-random-t5"
    if not (t5 / "config.json").exists(): build_tiny_t5(t5)
    export(args.git_dir, args.commit, out, t5)
    results = {v: run(out, v) for v in ("A", "B")}
    for v, r in results.items():
        print(f"{v} ({'diffusers MochiTransformer3DModel' if v == 'A' else 'fastvideo MochiDiT'}):", dict(Counter(r.values())))
    ok = {"PASSED", "XPASS"}
    lost = sorted(k for k, o in results["A"].items() if o in ok and results["B"].get(k) not in ok)
    print(f"pass with diffusers' model, not with MochiDiT: {len(lost)}")
    for k in lost: print(f"  {k}: {results['B'].get(k)}")
    sys.exit(1 if lost else 0)


if __name__ == "__main__":
    main()
