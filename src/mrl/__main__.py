"""``python -m mrl train [overrides]`` / ``python -m mrl eval [overrides]`` /
``python -m mrl export <run dir or .ckpt> [--out DIR] [--no-onnx] [--push-to-hub REPO_ID]``."""

import sys

from mrl.cli import eval_main, train_main


def export_main() -> None:
    """``mrl-export`` (imported lazily: ONNX and safetensors load only for this command)."""
    from mrl.export import main

    main()


COMMANDS = {"train": train_main, "eval": eval_main, "export": export_main}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        got = sys.argv[1] if len(sys.argv) > 1 else "nothing"
        print(f"error: python -m mrl takes train, eval or export first, got {got}", file=sys.stderr)
        sys.exit(2)
    command = sys.argv.pop(1)
    sys.argv[0] = f"mrl-{command}"
    COMMANDS[command]()


if __name__ == "__main__":
    main()
