"""Batch evaluation: the pack's workflows over a dataset of videos and edit prompts, on Ray.

    bash scripts/evaluate.sh --videos DIR --prompts FILE --out DIR [--arms baseline,smooth] [--settings quick]
    bash scripts/evaluate.sh --sample --out DIR      # the sample clips (scripts/make_sample_dataset.py)

One ComfyUI server per GPU (or per CPU slot on a machine without one) runs the jobs (video x
edit x arm); the tune of a video is shared by its edits. Outputs go to --out: one folder per
job (LOVEU submission JPGs, video.mp4, loss.png, record.json), results.csv, summary.md,
vl_per_video.png, metrics.png and index.html. Re-running the same command runs only what is
not done yet; Ctrl-C stops it with every finished job kept.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from make_sample_dataset import write_sample_dataset  # noqa: E402
from smooth_eval import arms, dataset, report, runner  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--videos", type=pathlib.Path, help="the dataset's folder (LOVEU: the release's data folder)")
    parser.add_argument("--prompts", type=pathlib.Path,
                        help="the prompt table: LOVEU-TGVE-2023_Dataset.csv, or a CSV video,source_prompt,edit_prompt[,edit,split]")
    parser.add_argument("--sample", action="store_true", help="write and evaluate the sample clips (into OUT/sample_data)")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="the output folder (re-runs continue in it)")
    parser.add_argument("--arms", default=",".join(arms.DEFAULT_ARMS),
                        help=f"comma-separated, of: {', '.join(arms.ARMS)} (default: %(default)s)")
    parser.add_argument("--settings", default="quick", choices=sorted(arms.SETTINGS),
                        help="paper: LOVEU's Tune-A-Video configs (every frame at 480 px, 500 steps; a GPU); "
                             "quick: 6 frames at 96 px, 10 steps (a CPU); tiny: the tests' (default: %(default)s)")
    parser.add_argument("--checkpoint", default="smoothvideo_tiny_sd15.safetensors",
                        help="an SD1.5 checkpoint in the models folder's checkpoints/ (default: the embedded tiny one)")
    parser.add_argument("--models", type=pathlib.Path, help="ComfyUI's models folder (default: the project host's)")
    parser.add_argument("--clip", type=pathlib.Path,
                        help="a transformers CLIP folder (openai/clip-vit-large-patch14) for CLIP-T and CLIP-F; without it, the VL score only")
    parser.add_argument("--workers", type=int, help="workers (ComfyUI servers); default: one per GPU, or 1 without a GPU")
    parser.add_argument("--address", help="join this Ray cluster (e.g. auto, or ray://head:10001) instead of a local Ray")
    parser.add_argument("--retry-failed", action="store_true", help="run failed jobs again (a re-run skips them otherwise)")
    parser.add_argument("--keep-tunes", action="store_true", help="keep each tune's weights in models/smoothvideo/ (deleted after its last job otherwise)")
    options = parser.parse_args(argv)
    if options.sample == bool(options.videos or options.prompts):
        parser.error("give --videos and --prompts, or --sample")
    if not options.sample and not (options.videos and options.prompts):
        parser.error("--videos and --prompts go together")
    options.arms = ",".join(dict.fromkeys(name.strip() for name in options.arms.split(",")))  # once each, in order
    unknown = [name for name in options.arms.split(",") if name not in arms.ARMS]
    if unknown or not options.arms:
        parser.error(f"unknown arm(s) {', '.join(unknown)}: choose from {', '.join(arms.ARMS)}")
    if options.workers is not None and options.workers < 1:
        parser.error("--workers must be at least 1")
    if options.clip and not (options.clip / "config.json").is_file():
        parser.error(f"--clip {options.clip} is not a transformers CLIP folder (no config.json): give the folder of "
                     "openai/clip-vit-large-patch14 (config.json, weights, tokenizer, preprocessor_config.json)")
    models = options.models or REPO / ".host" / "base" / "models"
    if not (models / "checkpoints" / options.checkpoint).is_file():
        parser.error(f"--checkpoint {options.checkpoint} is not in {models / 'checkpoints'}")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    if options.sample:
        options.videos = options.out / "sample_data"
        options.prompts = write_sample_dataset(options.videos)
    try:
        videos = dataset.read_prompts(options.prompts, options.videos)
    except dataset.DatasetError as error:
        print(f"evaluate: {error}", file=sys.stderr)
        return 2
    settings = runner.Options(
        out=options.out.resolve(), arms=tuple(options.arms.split(",")), settings=options.settings,
        checkpoint=options.checkpoint, clip=options.clip, workers=options.workers, address=options.address,
        models=options.models, retry_failed=options.retry_failed, keep_tunes=options.keep_tunes,
    )
    try:
        summary = runner.evaluate(videos, settings)
    except runner.EvaluationError as error:
        print(f"evaluate: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"evaluate: interrupted; the finished jobs are kept in {settings.out}: run the same command to go on",
              file=sys.stderr)
        return 130
    groups = runner.plan(videos, settings)
    written = report.write_report(settings.out, groups, settings.arms, clip=options.clip is not None)
    print(f"evaluate: ran {summary['ran']} job(s) ({summary['failed']} failed), skipped {summary['skipped']} done, "
          f"in {summary['seconds']:.0f} s on {summary['workers']} worker(s)", file=sys.stderr)
    for path in written:
        print(f"evaluate: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
