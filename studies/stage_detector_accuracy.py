"""Recall, spurious boundaries and 90 % interval coverage of the stage detector on planted curves.

    PYTHONPATH=. python studies/stage_detector_accuracy.py [n_curves] [first_seed]

Prints one line per curve family (LLC-like: plateaus, peaks, troughs, monotone stretches, noise 3 %
of range; loss-like: plateau and one or two drops, noise 2 %). The numbers quoted in the README come
from `python studies/stage_detector_accuracy.py 60 200`.
"""
import sys
import time

from llc_watch.stages import find_boundaries
from llc_watch.stages.synthetic import planted_llc, planted_loss, score


def main(n=60, first=200):
    for name, gen, det in (
            ("llc", planted_llc, lambda c: find_boundaries(c.steps, c.values, c.stderr, kind="llc", resamples=100)),
            ("loss", planted_loss, lambda c: find_boundaries(c.steps, c.values, None, kind="loss", direction="down",
                                                             resamples=100))):
        t = time.time()
        r = score([gen(s) for s in range(first, first + n)], det)
        print(f"{name:5s} curves {r['curves']}  events {r['events']}  recall@0.25 {r['recall']:.3f}  "
              f"spurious/curve {r['spurious_per_curve']:.2f}  90%-coverage {r['coverage']:.3f} "
              f"({r['matched']} matched)  [{time.time() - t:.0f} s]")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
