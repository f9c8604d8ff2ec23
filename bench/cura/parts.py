"""Real Cura G-code for bench/printer_floor.py: write a few parts as STL and slice each with CuraEngine.

CuraEngine runs as the npm package cura-wasm (WebAssembly, no install beyond npm); nothing is kept in the repo:

    (cd bench/cura && npm install cura-wasm cura-wasm-definitions)
    python bench/cura/parts.py --out /tmp/cura            # writes /tmp/cura/<part>.stl and <part>.gcode

Parts (prisms over an outline, 5-10 mm tall): a 20 mm cube, a 24-tooth gear, a five-pointed star, a 16-pin plate
(many islands: travels and retractions) and a disc sliced in spiral-vase mode. The printer is Cura's Creality
Ender-3 definition with its default profile (Marlin flavour).
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def prism(outline: np.ndarray, height: float) -> np.ndarray:
    """Triangles [T, 3, 3] of a closed prism over a star-shaped outline [N, 2] (caps fanned from its centre)."""
    a, b = outline, np.roll(outline, -1, 0)
    lo, hi = np.zeros((len(a), 1)), np.full((len(a), 1), height)
    A0, B0, A1, B1 = (np.hstack(p) for p in ((a, lo), (b, lo), (a, hi), (b, hi)))
    c0, c1 = np.zeros_like(A0), np.hstack([np.zeros_like(a), hi])
    return np.concatenate([np.stack(t, 1) for t in ((A0, B0, B1), (A0, B1, A1), (c0, B0, A0), (c1, A1, B1))])


def write_stl(path: Path, triangles: np.ndarray) -> None:
    normal = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    record = np.zeros(len(triangles), dtype=[("normal", "<f4", 3), ("vertices", "<f4", (3, 3)), ("attribute", "<u2")])
    record["normal"], record["vertices"] = normal, triangles
    path.write_bytes(b"kiln bench part".ljust(80) + np.uint32(len(triangles)).tobytes() + record.tobytes())


def parts() -> dict[str, tuple[np.ndarray, list]]:
    """name -> (triangles, Cura setting overrides)."""
    t = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    polar = lambda r: np.stack([r * np.cos(t), r * np.sin(t)], 1)  # noqa: E731
    pin = polar(np.full_like(t, 2.5))[::10]
    vase = [{"scope": "e0", "key": "magic_spiralize", "value": True}]
    return {
        "cube": (prism(np.array([[-10, -10], [10, -10], [10, 10], [-10, 10]], float), 10.0), []),
        "gear": (prism(polar(15 + 2 * np.sign(np.sin(24 * t))), 10.0), []),
        "star": (prism(polar(12 + 8 * np.cos(5 * t)), 10.0), []),
        "pins": (np.concatenate([prism(pin + [dx, dy], 6.0) for dx in (-30, -10, 10, 30) for dy in (-30, -10, 10, 30)]), []),
        "vase": (prism(np.stack([45 * np.cos(t), 25 * np.sin(t)], 1), 5.0), vase),
    }


def main() -> None:
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--printer", default="creality_ender3", help="a cura-wasm-definitions printer")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (triangles, overrides) in parts().items():
        write_stl(args.out / f"{name}.stl", triangles)
        subprocess.run(["node", str(HERE / "slice.js"), str(args.out / f"{name}.stl"), str(args.out / f"{name}.gcode"),
                        args.printer, json.dumps(overrides)], check=True)
        print(args.out / f"{name}.gcode")


if __name__ == "__main__":
    main()
