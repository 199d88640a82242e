"""Command line for the IF operations: image and mask files and prompts in, PNGs (and trajectories) out.

    python -m models.diffusion.cli --model DIR_OR_ID --out OUT_DIR OPERATION [options]

See ``models/diffusion/README.md`` for every operation and option. This is the only module of the package
that touches files; images and masks are read and written with the project's one codec, ``models.imageio``
(the worker uses the same one), so a file means the same here as in a request.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from .. import imageio
from .engine import DEFAULT_STAGE1_MODEL, IFEngine, ModelUnavailableError, load_stage1, load_stage2
from .ops import DenoiseMethod, anagram, center_crop_resize, denoise, hybrid, inpaint, sample, sdedit, upscale
from .views import VIEWS, get_view

logger = logging.getLogger("models.diffusion.cli")


class Trajectory:
    """A callback that records x_t after every step (first image of the batch, clamped, on the CPU) and
    shows a progress bar on stderr."""

    def __init__(self, desc: str = "", progress: bool = True) -> None:
        self.frames: list[Tensor] = []
        self.desc, self.progress = desc, progress
        self._bar: tqdm | None = None

    def __call__(self, step: int, total: int, x_t: Tensor, *_: object) -> None:
        self.frames.append(x_t[0].detach().float().cpu().clamp(-1, 1))
        if self.progress:
            if self._bar is None:
                self._bar = tqdm(total=total, desc=self.desc, unit="step", leave=False)
            self._bar.update(step - self._bar.n)
            if step >= total:
                self._bar.close()
                self._bar = None

    def write(self, path_stem: Path, kind: str, max_frames: int, scale: int) -> Path | None:
        if not self.frames:
            return None
        if kind == "strip":
            path = imageio.write_png(
                imageio.strip(self.frames, max_frames),
                path_stem.with_name(path_stem.name + "_trajectory.png"),
                scale=scale,
            )
        else:
            path = path_stem.with_name(path_stem.name + "_trajectory.gif")
            path.write_bytes(imageio.gif_bytes(self.frames, scale=scale))
        logger.info("wrote %s", path)
        return path


def write_png(x: Tensor, path: Path) -> Path:
    """Write (1, 3, H, W) or (3, H, W) in [-1, 1] as a PNG."""
    imageio.write_png(x, path)
    logger.info("wrote %s", path)
    return path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m models.diffusion.cli", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    p.add_argument("--model", default=DEFAULT_STAGE1_MODEL, help="stage-I hub id or local directory")
    p.add_argument("--stage2", default=None, help="stage-II hub id or directory (for upscale / --upscale)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtype",
        choices=["float16", "bfloat16", "float32"],
        default=None,
        help="default: float16 on CUDA, float32 on CPU",
    )
    p.add_argument("--text-encoder-device", default=None, help='e.g. "cpu" or "offload" (default: --device)')
    p.add_argument("--embedding-cache", default=None, help="directory that persists prompt embeddings")
    p.add_argument("--out", type=Path, default=Path("if_out"), help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=7.0)
    p.add_argument("--stride", type=int, default=30, help="timestep stride: 990, 960, ..., 0 for 30")
    p.add_argument(
        "--trajectory", choices=["none", "strip", "gif"], default="none", help="also write the denoising trajectory x_t"
    )
    p.add_argument("--trajectory-frames", type=int, default=10, help="frames in a strip")
    p.add_argument("--scale", type=int, default=4, help="pixel upscaling of trajectory images")
    p.add_argument("--upscale", action="store_true", help="also upscale the result with --stage2")
    p.add_argument("--upscale-steps", type=int, default=50)
    p.add_argument("--upscale-guidance", type=float, default=4.0)
    sub = p.add_subparsers(dest="op", required=True)

    s = sub.add_parser("sample", help="text to image")
    s.add_argument("--prompt", required=True)
    s.add_argument("--batch", type=int, default=1)

    s = sub.add_parser("sdedit", help="image to image from a noise level i_start")
    s.add_argument("--image", required=True)
    s.add_argument("--prompt", default="a high quality photo")
    s.add_argument("--i-start", type=int, nargs="+", default=[10], help="one or more start indices")

    s = sub.add_parser("inpaint", help="regenerate the white region of a mask")
    s.add_argument("--image", required=True)
    s.add_argument("--mask", required=True, help="white = new content, black = keep")
    s.add_argument("--prompt", default="a high quality photo")

    s = sub.add_parser("anagram", help="one image, a different prompt under each view")
    s.add_argument("--prompt", action="append", required=True, help="repeat: one per view")
    s.add_argument(
        "--view",
        action="append",
        default=None,
        choices=sorted(VIEWS),
        help="repeat: one per prompt (default: identity, flip_vertical)",
    )

    s = sub.add_parser("hybrid", help="prompt-low from afar, prompt-high up close")
    s.add_argument("--prompt-low", required=True)
    s.add_argument("--prompt-high", required=True)
    s.add_argument("--kernel-size", type=int, default=33)
    s.add_argument("--sigma", type=float, default=2.0)

    s = sub.add_parser("denoise", help="noise an image to t and denoise it")
    s.add_argument("--image", required=True)
    s.add_argument("--t", type=int, nargs="+", default=[250, 500, 750])
    s.add_argument(
        "--method", choices=[m.value for m in DenoiseMethod], nargs="+", default=[m.value for m in DenoiseMethod]
    )
    s.add_argument("--prompt", default="a high quality photo")
    s.add_argument("--blur-kernel-size", type=int, default=5)
    s.add_argument("--blur-sigma", type=float, default=2.0)

    s = sub.add_parser("upscale", help="stage II on an image file (needs --stage2)")
    s.add_argument("--image", required=True)
    s.add_argument("--prompt", default="a high quality photo")
    return p


def run(args: argparse.Namespace) -> list[Path]:
    """Execute one parsed command; returns the written files."""
    args.out.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    written: list[Path] = []
    stage1: IFEngine | None = None
    if args.op != "upscale":
        stage1 = load_stage1(
            args.model,
            device=args.device,
            dtype=dtype,
            text_encoder_device=args.text_encoder_device,
            embedding_cache_dir=args.embedding_cache,
        )
    stage2 = None
    if args.op == "upscale" or args.upscale:
        if not args.stage2:
            raise SystemExit("upscaling needs --stage2 MODEL")
        stage2 = load_stage2(
            args.stage2,
            device=args.device,
            dtype=dtype,
            stage1=stage1,
            text_encoder_device=args.text_encoder_device,
            embedding_cache_dir=args.embedding_cache,
        )

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(args.seed)

    def emit(name: str, image: Tensor, traj: Trajectory | None, prompt: str) -> None:
        for b in range(image.shape[0]):
            suffix = f"_{b}" if image.shape[0] > 1 else ""
            written.append(write_png(image[b], args.out / f"{name}{suffix}.png"))
            if stage2 is not None and args.op != "upscale":
                big = upscale(
                    stage2,
                    image[b : b + 1],
                    prompt,
                    guidance=args.upscale_guidance,
                    generator=gen(),
                    steps=args.upscale_steps,
                )
                written.append(write_png(big, args.out / f"{name}{suffix}_{stage2.image_size}.png"))
        if traj is not None and args.trajectory != "none":
            path = traj.write(args.out / name, args.trajectory, args.trajectory_frames, args.scale)
            if path is not None:
                written.append(path)

    common = {"guidance": args.guidance, "stride": args.stride}
    if args.op == "sample":
        assert stage1 is not None
        traj = Trajectory(args.op)
        emit(
            "sample",
            sample(stage1, args.prompt, generator=gen(), callback=traj, batch_size=args.batch, **common),
            traj,
            args.prompt,
        )
    elif args.op == "sdedit":
        assert stage1 is not None
        image = imageio.read_image(args.image)
        written.append(write_png(center_crop_resize(image, stage1.image_size), args.out / "input.png"))
        for i in args.i_start:
            traj = Trajectory(args.op)
            emit(
                f"sdedit_i{i}",
                sdedit(stage1, image, args.prompt, i_start=i, generator=gen(), callback=traj, **common),
                traj,
                args.prompt,
            )
    elif args.op == "inpaint":
        assert stage1 is not None
        traj = Trajectory(args.op)
        emit(
            "inpaint",
            inpaint(
                stage1,
                imageio.read_image(args.image),
                imageio.read_mask(args.mask),
                args.prompt,
                generator=gen(),
                callback=traj,
                **common,
            ),
            traj,
            args.prompt,
        )
    elif args.op == "anagram":
        assert stage1 is not None
        views = [get_view(v) for v in (args.view or ["identity", "flip_vertical"])]
        traj = Trajectory(args.op)
        image = anagram(stage1, args.prompt, views, generator=gen(), callback=traj, **common)
        emit("anagram", image, traj, args.prompt[0])
        for i, (view, prompt) in enumerate(zip(views, args.prompt, strict=True)):
            written.append(write_png(view.view(image), args.out / f"anagram_view{i}_{view.name}.png"))
            logger.info("view %d (%s): %s", i, view.name, prompt)
    elif args.op == "hybrid":
        assert stage1 is not None
        traj = Trajectory(args.op)
        emit(
            "hybrid",
            hybrid(
                stage1,
                args.prompt_low,
                args.prompt_high,
                kernel_size=args.kernel_size,
                sigma=args.sigma,
                generator=gen(),
                callback=traj,
                **common,
            ),
            traj,
            args.prompt_low,
        )
    elif args.op == "denoise":
        assert stage1 is not None
        image = imageio.read_image(args.image)
        written.append(write_png(center_crop_resize(image, stage1.image_size), args.out / "input.png"))
        for t in args.t:
            for method in args.method:
                traj = Trajectory(args.op)
                result = denoise(
                    stage1,
                    image,
                    t,
                    method,
                    prompt=args.prompt,
                    generator=gen(),
                    callback=traj,
                    blur_kernel_size=args.blur_kernel_size,
                    blur_sigma=args.blur_sigma,
                    **common,
                )
                if method == args.method[0]:  # same seed: the same x_t for every method
                    written.append(write_png(result.noisy, args.out / f"noisy_t{t}.png"))
                emit(f"denoise_{method}_t{t}", result.denoised, traj, args.prompt)
    elif args.op == "upscale":
        assert stage2 is not None
        traj = Trajectory(args.op)
        big = upscale(
            stage2,
            imageio.read_image(args.image),
            args.prompt,
            guidance=args.upscale_guidance,
            generator=gen(),
            callback=traj,
            steps=args.upscale_steps,
        )
        written.append(write_png(big, args.out / f"upscale_{stage2.image_size}.png"))
        if args.trajectory != "none":
            path = traj.write(args.out / "upscale", args.trajectory, args.trajectory_frames, 1)
            if path is not None:
                written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run(args)
    except ModelUnavailableError as exc:
        logger.error("%s", exc)
        return 2
    except ValueError as exc:
        logger.error("invalid request: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
