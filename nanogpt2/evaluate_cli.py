"""
`python -m nanogpt2.evaluate`: the command that scores a model, dispatching on `--task` to the module that owns the
task's evaluation — `lm` (the default) to nanogpt2.evaluate's strided perplexity, `classify` to nanogpt2.classify's
accuracy. It sits above both (they never import it), so no library module dispatches upward.

    python -m nanogpt2.evaluate --init_from gpt2 --dataset wikitext2 --split test --stride 512
    python -m nanogpt2.evaluate --task classify --init_from out-classify-ag_news --dataset ag_news
    from nanogpt2.evaluate_cli import main; main(["--task", "classify", "--init_from", "RUN"])
"""

import argparse
import sys

TASKS = ("lm", "classify")


def main(argv=None):
    """Run the `--task`'s evaluation command with the other arguments; returns its result."""
    argv = sys.argv[1:] if argv is None else list(argv)
    task = argparse.ArgumentParser(add_help=False)
    task.add_argument("--task", default="lm", choices=TASKS)
    known, rest = task.parse_known_args(argv)
    if known.task == "classify":  # the accuracy of a classifier
        from nanogpt2.classify import evaluate_main

        return evaluate_main(rest)
    from nanogpt2.evaluate import main as perplexity_main

    return perplexity_main(argv)
