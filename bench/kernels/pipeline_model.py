#!/usr/bin/env python3
"""A model of the stage pipelines of glu_gemm_lab.cu (variants 02 and 03), run over many
random interleavings: mbarriers (arrival counts, transaction bytes, waits by phase parity),
a producer thread, and consumer warps that each progress on their own. Asynchronous copies
complete in any order.

It checks what the kernels' correctness rests on and a GPU run cannot show directly:
every consumer wait returns only once its own stage's data is in the slot (a parity wait
more than one phase ahead returns early), and nothing deadlocks. It models the
synchronisation only, not the products.

    python3 bench/kernels/pipeline_model.py        # exits 1 on a failure
"""
import itertools
import random
import sys


class Barrier:
    """mbarrier: a phase completes when all arrivals and the expected bytes are in."""

    def __init__(self, count):
        self.count, self.pending, self.phase, self.tx = count, count, 0, 0

    def arrive(self, expect_bytes=0):
        self.tx += expect_bytes
        self.pending -= 1
        self._advance()

    def complete_tx(self, n):
        self.tx -= n
        self._advance()

    def _advance(self):
        if self.pending == 0 and self.tx == 0:
            self.phase, self.pending = self.phase + 1, self.count

    def done(self, parity):
        """mbarrier.try_wait.parity: true once the phase of this parity has completed,
        that is while the current phase has the other parity."""
        return (self.phase & 1) != parity


def run(variant, tiles, grid, block, k_tiles, stages, seed):
    rng = random.Random(seed)
    mine = list(range(block, tiles, grid))  # this block's tiles, in order
    full = [Barrier(1) for _ in range(stages)]
    empty = [Barrier(8 if variant == "02" else 4) for _ in range(stages)]
    turn = [Barrier(1), Barrier(1)]
    group_bar = [[0, 0], [0, 0]]  # per consumer warpgroup: arrived, generation (bar.sync, 128 threads)
    slot, copies = [None] * stages, []

    def producer():
        stage, phase, g = 0, 0, 0
        for _ in mine:
            for _ in range(k_tiles):
                while not empty[stage].done(phase ^ 1):
                    yield
                full[stage].arrive(expect_bytes=3)
                copies.append((stage, g))
                g += 1
                stage += 1
                if stage == stages:
                    stage, phase = 0, phase ^ 1
                yield

    def consume(stage, parity, g, who):
        while not full[stage].done(parity):
            yield
        assert slot[stage] == g, f"{who} waited for stage {g} and found stage {slot[stage]}"

    def cooperative(c, warp):  # 02: both warpgroups take every stage
        stage, phase, g = 0, 0, 0
        for _ in mine:
            previous = -1
            for _ in range(k_tiles):
                yield from consume(stage, phase, g, f"02 warpgroup {c} warp {warp}")
                yield  # the products run
                if previous >= 0:
                    empty[previous].arrive()
                previous, g = stage, g + 1
                stage += 1
                if stage == stages:
                    stage, phase = 0, phase ^ 1
            empty[previous].arrive()
            yield

    def pingpong(c, warp):  # 03: warpgroup c takes tiles c, c + 2, ... of the list
        for i in range(c, len(mine), 2):
            if i > 0:
                while not turn[c].done(((i - 1) // 2) & 1):
                    yield
            previous = -1
            for kt in range(k_tiles):
                g = i * k_tiles + kt
                yield from consume(g % stages, (g // stages) & 1, g, f"03 warpgroup {c} warp {warp}")
                yield
                if previous >= 0:
                    empty[previous].arrive()
                previous = g % stages
            bar = group_bar[c]  # all four warps, then thread 0 signals
            bar[0] += 1
            generation = bar[1]
            if bar[0] == 4:
                bar[0], bar[1] = 0, bar[1] + 1
            while bar[1] == generation:
                yield
            if warp == 0:
                turn[1 - c].arrive()
            yield
            empty[previous].arrive()
            yield

    consumer = cooperative if variant == "02" else pingpong
    alive = [producer()] + [consumer(c, w) for c in range(2) for w in range(4)]
    for _ in range(10**6):
        if not alive:
            return
        if copies and rng.random() < 0.3:  # a copy lands, any of those in flight
            stage, g = copies.pop(rng.randrange(len(copies)))
            slot[stage] = g
            full[stage].complete_tx(3)
        p = rng.choice(alive)
        try:
            next(p)
        except StopIteration:
            alive.remove(p)
    raise AssertionError(f"{variant}: no progress (deadlock) with {len(mine)} tiles, {k_tiles} k-tiles")


def main():
    runs = 0
    for variant, stages in (("02", 4), ("03", 6)):
        for seed in range(40):
            for tiles, grid, k_tiles in itertools.product((1, 2, 3, 5, 9), (1, 2, 3), (1, 2, 5, 6, 7, 13)):
                for block in range(grid):
                    try:
                        run(variant, tiles, grid, block, k_tiles, stages, seed)
                    except AssertionError as e:
                        print(f"FAILED (seed {seed}): {e}")
                        return 1
                    runs += 1
    print(f"pipeline model: {runs} interleavings, every wait saw its own stage, none deadlocked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
