"""``python -m radpipe``: the same command line as the ``radpipe`` console script."""

from radpipe.cli import run

if __name__ == "__main__":
    run()
