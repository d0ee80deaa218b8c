"""`sana-studio`: the console entry point (the window, or `generate` on the command line)."""

import sys

from app.cli import main as cli_main


def main() -> int:
    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
