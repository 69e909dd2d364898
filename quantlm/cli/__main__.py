"""`python -m quantlm.cli`: the quantlm command line."""

from quantlm.cli import app

if __name__ == "__main__":
    app()
