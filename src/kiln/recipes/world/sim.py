"""Rollouts of gymnasium's CarRacing-v3 (Box2D) for the world model, collected in parallel worker processes.

Each episode mixes two drivers, switching between them in segments of ~25 steps:
- a noisy road follower: steers toward a point ~5 track tiles ahead (the lateral offset of that point in
  the car's frame), with Ornstein-Uhlenbeck steering noise and a speed target drawn per episode, so the
  car mostly stays on the road and sees curves, curbs and straights;
- random actions (as in Ha & Schmidhuber 2018), each held for 1-10 steps, so the data covers skids,
  grass and braking that a good driver never shows.

The first `intro_frames` frames (CarRacing's camera zoom-in) are dropped. The policy's per-step
control is inherently sequential (it reads the simulator's state), so the parallelism is across
episodes: one environment per worker process.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np

from kiln.errors import KilnError

INSTALL = 'pip install "gymnasium[box2d]"  (or: pip install -e ".[world]")'
LOOKAHEAD_TILES = 5
SEGMENT_MEAN_STEPS = 25
TRACK_SEED_SPACE = 2**30  # train/val tracks are seeds in [0, 2^30); test tracks in [2^30, 2^31)


def require_gymnasium():
    """gymnasium with Box2D, or a one-line error with the install command."""
    try:
        import gymnasium
        import Box2D  # noqa: F401  (gymnasium imports it only when the environment is made)
        import pygame  # noqa: F401  (CarRacing renders its frames with pygame)
    except ImportError as err:
        raise KilnError(f"collecting CarRacing rollouts needs gymnasium with Box2D ({err.name} is missing); run: {INSTALL}") from None
    return gymnasium


def track_seed(seed: int, episode: int, test: bool) -> int:
    """Track seeds of test episodes come from a range the training and validation tracks never use."""
    base = (seed * 1_000_003 + episode * 7_919) % TRACK_SEED_SPACE
    return base + TRACK_SEED_SPACE if test else base


class MixedDriver:
    """The noisy road follower and random actions, switched in segments (see the module docstring)."""

    def __init__(self, rng: np.random.Generator, random_fraction: float, steer_noise: float):
        self.rng, self.random_fraction, self.steer_noise = rng, random_fraction, steer_noise
        self.target_speed = rng.uniform(25, 60)
        self.noise = 0.0
        self.segment_left, self.random_mode = 0, False
        self.held, self.hold_left = np.zeros(3, np.float32), 0

    def road_follower(self, car, track: np.ndarray) -> np.ndarray:
        position = np.array(car.hull.position)
        nearest = int(np.argmin(((track - position) ** 2).sum(1)))
        to_target = track[(nearest + LOOKAHEAD_TILES) % len(track)] - position
        right = np.array(car.hull.GetWorldVector((1, 0)))
        lateral = to_target @ right / (np.linalg.norm(to_target) + 1e-6)  # sin of the bearing: > 0 means steer right
        self.noise += 0.15 * (0 - self.noise) + self.steer_noise * 0.5 * self.rng.normal()  # Ornstein-Uhlenbeck
        speed = float(np.linalg.norm(car.hull.linearVelocity))
        gas = np.clip((self.target_speed - speed) / 20, 0, 0.6)
        brake = 0.4 if speed > self.target_speed + 15 else 0.0
        return np.array([np.clip(2.0 * lateral + self.noise, -1, 1), gas, brake], np.float32)

    def random_action(self) -> np.ndarray:
        if self.hold_left == 0:
            brake = self.rng.uniform(0, 1) if self.rng.uniform() < 0.15 else 0.0
            self.held = np.array([self.rng.uniform(-1, 1), self.rng.uniform(0, 1), brake], np.float32)
            self.hold_left = int(self.rng.integers(1, 11))
        self.hold_left -= 1
        return self.held

    def act(self, car, track: np.ndarray, intro: bool) -> np.ndarray:
        if self.segment_left == 0:
            self.random_mode = self.rng.uniform() < self.random_fraction
            self.segment_left = int(self.rng.geometric(1 / SEGMENT_MEAN_STEPS))
        self.segment_left -= 1
        if self.random_mode and not intro:  # the intro (dropped) only gets the car rolling
            return self.random_action()
        return self.road_follower(car, track)


_ENV: dict[str, Any] = {}


def rollout(job: dict[str, Any]) -> dict[str, Any]:
    """One episode in this worker's environment: uint8 frames [T, size, size, 3], actions [T, 3] (a_t is
    applied at frame t), after dropping the intro. T < steps when the car leaves the playfield."""
    from PIL import Image

    gymnasium = require_gymnasium()
    total = job["intro_frames"] + job["steps"]
    key = (job["env"], total)
    if key not in _ENV:
        _ENV.clear()
        _ENV[key] = gymnasium.make(job["env"], max_episode_steps=total)
    env = _ENV[key]
    rng = np.random.default_rng([job["seed"], job["episode"]])
    obs, _ = env.reset(seed=job["track_seed"])
    unwrapped = env.unwrapped
    track = np.array([tile[2:4] for tile in unwrapped.track])
    driver = MixedDriver(rng, job["random_fraction"], job["steer_noise"])
    frames, actions = [], []
    for t in range(total):
        action = driver.act(unwrapped.car, track, intro=t < job["intro_frames"])
        if t >= job["intro_frames"]:
            image = Image.fromarray(obs)
            frames.append(np.asarray(image if obs.shape[0] == job["size"] else image.resize((job["size"], job["size"]), Image.BILINEAR)))
            actions.append(action)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    return {"episode": job["episode"], "track_seed": job["track_seed"], "frames": np.stack(frames), "actions": np.stack(actions),
            "tiles_visited": int(unwrapped.tile_visited_count), "track_tiles": len(track)}


def worker_count(settings) -> int:
    """Worker processes: one per episode at most, and no more than the CPU cores (each runs one CPU-bound environment)."""
    return min(settings.workers, settings.episodes, os.cpu_count() or 1)


def collect(settings, log: Callable[[str], None]) -> Iterator[dict[str, Any]]:
    """The episodes of a CollectSettings, each with its split, in episode order as they finish (`workers` processes);
    only the episodes in flight are held in memory."""
    require_gymnasium()
    n, n_test, n_val = settings.episodes, settings.test_episodes, settings.val_episodes
    split_of = ["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    jobs = [{"env": settings.env, "seed": settings.seed, "episode": i, "track_seed": track_seed(settings.seed, i, split_of[i] == "test"),
             "steps": settings.steps, "intro_frames": settings.intro_frames, "size": settings.size,
             "random_fraction": settings.random_fraction, "steer_noise": settings.steer_noise} for i in range(n)]
    workers = worker_count(settings)
    capped = f" (--workers {settings.workers}, but this machine has {os.cpu_count()} CPU cores)" if workers < min(settings.workers, n) else ""
    log(f"Collecting {n} {settings.env} episodes of up to {settings.steps} frames with {workers} worker processes{capped} ...")
    if workers == 1:
        yield from ({**episode, "split": split_of[episode["episode"]]} for episode in map(rollout, jobs))
        return
    import multiprocessing

    # spawn: a worker never inherits a parent's torch threads or an open pygame display
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for episode in pool.map(rollout, jobs):
            yield {**episode, "split": split_of[episode["episode"]]}


def collection_stats(settings, episodes: list[dict[str, Any]], seconds: float, log: Callable[[str], None]) -> dict[str, Any]:
    """Throughput and track progress of a finished collection, from dataset.json's episode entries."""
    kept = sum(e["frames"] for e in episodes)
    simulated = kept + len(episodes) * settings.intro_frames
    workers = worker_count(settings)
    stats = {"collect_seconds": round(seconds, 2), "frames_per_second": round(kept / seconds, 1),
             "simulated_steps_per_second": round(simulated / seconds, 1), "workers": workers, "cpu_count": os.cpu_count(),
             "mean_track_progress": round(float(np.mean([e["tiles_visited"] / e["track_tiles"] for e in episodes])), 3)}
    log(f"Collected {kept:,} frames in {seconds:.1f}s: {stats['frames_per_second']:.0f} frames/s kept "
        f"({stats['simulated_steps_per_second']:.0f} simulator steps/s incl. the dropped intro) with {workers} workers")
    return stats
