"""Evaluate a flow checkpoint with a small MNIST classifier: class accuracy and Frechet distance.

    python -m models.flow.evaluate --checkpoint models/checkpoints/mnist_class_fm.safetensors \
        --solvers euler:50 heun:25 heun:12 --n 1000 --json results/eval_class.json

Data split (all real digits in ``--data``: t10k 10,000 + train5k 5,000 = 15,000), with one seeded
permutation of the 15,000 (seed ``--split-seed``):

* classifier: trained on the first 12,000, its own accuracy measured on the last 3,000 (held out);
* Frechet distance (FD) on the classifier's 128-d penultimate features: real half A (7,500) is the
  reference; generated digits are compared with A; the real-vs-real baseline compares half B
  (disjoint from A) with A, both with all 7,500 and with the same N as the generated set (FD has a
  small-sample bias, so the N-sample baseline is the fair comparison).

Accuracy: ``--n`` digits (default 1,000), requested classes 0..9 in turn (n/10 each), classified by
the classifier; accuracy = agreement with the requested digit. For a time-conditioned model only
FD and the class histogram are reported.

NFE counting: one batched UNet forward is one evaluation (with CFG it holds 2n images). Euler with
K steps = K NFE, Heun / midpoint with K steps = 2K NFE.

Sweeps: ``--guidance`` takes several scales (every solver is run at each); ``--fast DTYPE`` samples
through :func:`models.flow.inference.prepare_for_inference` (folded BN, channels-last, float32 or
bf16 autocast) instead of the plain network, to check that the fast path keeps the scores. The
split, the classifier, the features, N and the seeds do not change with either option.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .checkpoint import load_model
from .classifier import (
    ClassifierTrainConfig,
    MNISTClassifier,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
)
from .frechet import frechet_distance
from .inference import PRECISIONS, FlowNet, prepare_for_inference
from .sampling import SOLVERS, generate, nfe
from .train import add_data_arguments, load_data, pick_device
from .unet import FlowUNet

logger = logging.getLogger("models.flow.evaluate")


@dataclass
class EvalRow:
    """One (sampler, steps) evaluation."""

    method: str
    steps: int
    nfe: int
    guidance: float | None
    n: int
    accuracy: float | None
    fd: float
    seconds: float
    class_histogram: list[int]


def split_indices(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Seeded permutation of n indices: classifier train (80%) / holdout (20%); FD halves A / B."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * n)
    half = n // 2
    return {"clf_train": perm[:cut], "clf_holdout": perm[cut:], "fd_a": perm[:half], "fd_b": perm[half : 2 * half]}


def sample_in_chunks(
    model: FlowUNet | FlowNet,
    n: int,
    *,
    conditional: bool,
    method: str,
    steps: int,
    guidance: float,
    seed: int,
    chunk: int = 250,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Generate n digits (requested labels i % 10 for the class model), chunked to bound memory."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10 if conditional else None
    out = []
    for b in range(0, n, chunk):
        m = min(chunk, n - b)
        digits = None if labels is None else labels[b : b + m].tolist()
        out.append(
            generate(model, n=m, digits=digits, steps=steps, guidance=guidance, method=method, generator=g).cpu()
        )
    return torch.cat(out), labels


def evaluate(
    model: FlowUNet | FlowNet,
    classifier: MNISTClassifier,
    real_ref_features: torch.Tensor,
    solvers: list[tuple[str, int]],
    *,
    n: int = 1000,
    guidance: float | Sequence[float] = 5.0,
    seed: int = 0,
) -> list[EvalRow]:
    """Accuracy and FD for each (guidance, method, steps); the same noise seed for every row."""
    conditional = model.config.conditioning == "class"
    scales = [float(guidance)] if isinstance(guidance, (int, float)) else [float(g) for g in guidance]
    if not conditional:
        scales = scales[:1]  # no guidance for a time model
    rows = []
    for w, (method, steps) in ((g, s) for g in scales for s in solvers):
        t0 = time.perf_counter()
        images, labels = sample_in_chunks(
            model, n, conditional=conditional, method=method, steps=steps, guidance=w, seed=seed
        )
        secs = time.perf_counter() - t0
        preds, feats = predict(classifier, images)
        acc = float((preds == labels).float().mean()) if labels is not None else None
        row = EvalRow(
            method,
            steps,
            nfe(method, steps),
            w if conditional else None,
            n,
            acc,
            frechet_distance(feats, real_ref_features),
            secs,
            torch.bincount(preds, minlength=10).tolist(),
        )
        logger.info("%s", row)
        rows.append(row)
    return rows


def format_table(rows: list[EvalRow], baseline: dict[str, float]) -> str:
    """A Markdown table of the rows plus the real-vs-real baselines."""
    lines = [
        "| sampler | steps | NFE (batched forwards) | guidance | samples | class accuracy | FD vs real half A | sampling time (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        acc = "n/a" if r.accuracy is None else f"{100 * r.accuracy:.1f}%"
        g = "-" if r.guidance is None else f"{r.guidance:g}"
        lines.append(f"| {r.method} | {r.steps} | {r.nfe} | {g} | {r.n} | {acc} | {r.fd:.2f} | {r.seconds:.0f} |")
    lines.append(
        f"| real half B (baseline) | - | - | - | {int(baseline['n_small'])} | "
        f"{100 * baseline['classifier_accuracy_b_small']:.1f}% | {baseline['fd_real_small']:.2f} | - |"
    )
    lines.append(
        f"| real half B (baseline) | - | - | - | {int(baseline['n_half'])} | "
        f"{100 * baseline['classifier_accuracy_b']:.1f}% | {baseline['fd_real_half']:.2f} | - |"
    )
    return "\n".join(lines)


def parse_solver(spec: str) -> tuple[str, int]:
    method, _, steps = spec.partition(":")
    if method not in SOLVERS or not steps.isdigit():
        raise argparse.ArgumentTypeError(f"expected METHOD:STEPS with METHOD in {sorted(SOLVERS)}, got {spec!r}")
    return method, int(steps)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="flow .safetensors (JSON beside it)")
    p.add_argument(
        "--classifier",
        default="models/checkpoints/mnist_classifier.safetensors",
        help="classifier checkpoint; trained and written there when missing",
    )
    p.add_argument("--retrain-classifier", action="store_true")
    add_data_arguments(p)
    p.add_argument(
        "--solvers",
        nargs="+",
        type=parse_solver,
        default=[("euler", 50), ("heun", 25), ("heun", 12)],
        help="METHOD:STEPS, e.g. euler:50 heun:12",
    )
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--guidance", type=float, nargs="+", default=[5.0], help="one or more CFG scales (class model)")
    p.add_argument(
        "--fast",
        choices=["off", *PRECISIONS],
        default="off",
        help="sample through prepare_for_inference with this dtype (default off: the plain network)",
    )
    p.add_argument("--tag", default="", help="free text stored in the JSON (what this run checks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=1234)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_data(args)
    idx = split_indices(data.images.shape[0], args.split_seed)
    clf_path = Path(args.classifier)
    if args.retrain_classifier or not clf_path.exists():
        t0 = time.perf_counter()
        clf = train_classifier(data.images[idx["clf_train"]], data.labels[idx["clf_train"]], ClassifierTrainConfig())
        hold_pred, _ = predict(clf, data.images[idx["clf_holdout"]])
        hold_acc = float((hold_pred == data.labels[idx["clf_holdout"]]).float().mean())
        save_classifier(
            clf,
            clf_path,
            metadata={
                "data": f"{args.data} ({data.name})",
                "split_seed": args.split_seed,
                "train_images": int(idx["clf_train"].numel()),
                "holdout_images": int(idx["clf_holdout"].numel()),
                "holdout_accuracy": hold_acc,
                "train_config": asdict(ClassifierTrainConfig()),
                "seconds": round(time.perf_counter() - t0, 1),
            },
        )
        logger.info("trained classifier: holdout accuracy %.4f -> %s", hold_acc, clf_path)
    clf = load_classifier(clf_path)
    hold_pred, _ = predict(clf, data.images[idx["clf_holdout"]])
    hold_acc = float((hold_pred == data.labels[idx["clf_holdout"]]).float().mean())

    _, feats_a = predict(clf, data.images[idx["fd_a"]])
    pred_b, feats_b = predict(clf, data.images[idx["fd_b"]])
    lab_b = data.labels[idx["fd_b"]]
    n_small = min(args.n, feats_b.shape[0])
    baseline = {
        "n_half": feats_b.shape[0],
        "n_small": n_small,
        "fd_real_half": frechet_distance(feats_b, feats_a),
        "fd_real_small": frechet_distance(feats_b[:n_small], feats_a),
        "classifier_accuracy_b": float((pred_b == lab_b).float().mean()),
        "classifier_accuracy_b_small": float((pred_b[:n_small] == lab_b[:n_small]).float().mean()),
    }

    device = pick_device(args.device)
    model, config = load_model(args.checkpoint, device=device)
    net: FlowUNet | FlowNet = model if args.fast == "off" else prepare_for_inference(model, dtype=args.fast)
    sampler_path = (
        "plain FlowUNet, float32"
        if args.fast == "off"
        else (f"prepare_for_inference: {str(net.dtype).removeprefix('torch.')}, channels_last, folded BN")
    )
    logger.info("sampling with %s", sampler_path)
    rows = evaluate(net, clf, feats_a, args.solvers, n=args.n, guidance=args.guidance, seed=args.seed)
    table = format_table(rows, baseline)
    result = {
        "checkpoint": str(args.checkpoint),
        "config": config.to_dict(),
        "classifier": str(clf_path),
        "classifier_holdout_accuracy": hold_acc,
        "split": "seeded permutation of all real digits: classifier train 80% / holdout 20%; FD halves A/B 50/50",
        "baseline": baseline,
        "rows": [asdict(r) for r in rows],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "sampler_path": sampler_path,
        "tag": args.tag,
        "table_markdown": table,
    }
    print(f"classifier holdout accuracy: {100 * hold_acc:.2f}% ({idx['clf_holdout'].numel()} held-out digits)")
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
