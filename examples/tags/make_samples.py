"""Write examples/tags/tables/samples.parquet: a small, deterministic table of image tags.

It stands in for what a dataset's taggers produce (faces, people, brightness, weather, scene
fractions, label lists and object detections), so the README's first command can run tag queries
on a fresh machine without models.  Run it again to regenerate the file byte for byte.
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).parent
WEATHER = ["sunny", "rainy", "snowy", "foggy", "night"]
SCENES = ["street", "beach", "forest", "bathroom", "kitchen", "highway", "office", "park"]
OBJECTS = ["person", "car", "bicycle", "dog", "tree", "boat", "bus", "chair"]

DETECTION = pa.struct(
    [("label", pa.string()), ("score", pa.float32()), ("box", pa.list_(pa.float32(), 4))]
)


def make(n: int = 240, seed: int = 7) -> pa.Table:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        scene = rng.choice(SCENES)
        weather = rng.choice(WEATHER) if scene not in ("bathroom", "kitchen", "office") else None
        outdoor = weather is not None
        dets = []
        for _ in range(rng.choice([0, 1, 2, 3, 5, 8])):
            label = (
                "person"
                if rng.random() < 0.45
                else rng.choice(OBJECTS if outdoor else ["chair", "dog"])
            )
            x, y = rng.random() * 0.8, rng.random() * 0.8
            dets.append(
                {
                    "label": label,
                    "score": round(rng.uniform(0.3, 0.99), 3),
                    "box": [round(x, 3), round(y, 3), round(x + 0.2, 3), round(y + 0.2, 3)],
                }
            )
        people = sum(1 for d in dets if d["label"] == "person" and d["score"] > 0.5)
        labels = [scene, "outdoor" if outdoor else "indoor"]
        if weather == "night":
            labels.append("night")
        road = (
            round(rng.uniform(0.2, 0.6), 3)
            if scene in ("street", "highway")
            else round(rng.uniform(0, 0.08), 3)
        )
        ocean = round(rng.uniform(0.5, 0.9), 3) if scene == "beach" else 0.0
        brightness = round(
            rng.uniform(0.02, 0.25) if weather == "night" else rng.uniform(0.3, 0.95), 3
        )
        rows.append(
            {
                "sample_id": f"s{i:04d}",
                "uri": f"images/{scene}/{i:04d}.jpg",
                "width": rng.choice([640, 1024, 1280]),
                "height": rng.choice([480, 768, 720]),
                "num_faces": min(people, rng.choice([0, 1, 2, 3])),
                "num_people": people,
                "brightness": brightness,
                "weather": weather,
                "time_of_day": "night"
                if weather == "night"
                else rng.choice(["morning", "afternoon", "evening"]),
                "road_pct": road,
                "ocean_pct": ocean,
                "is_blurry": rng.random() < 0.1,
                "labels": labels,
                "detections": dets,
            }
        )
    schema = pa.schema(
        [
            ("sample_id", pa.string()),
            ("uri", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("num_faces", pa.int32()),
            ("num_people", pa.int32()),
            ("brightness", pa.float32()),
            ("weather", pa.string()),
            ("time_of_day", pa.string()),
            ("road_pct", pa.float32()),
            ("ocean_pct", pa.float32()),
            ("is_blurry", pa.bool_()),
            ("labels", pa.list_(pa.string())),
            ("detections", pa.list_(DETECTION)),
        ]
    )
    return pa.Table.from_pylist(rows, schema)


if __name__ == "__main__":
    out = HERE / "tables" / "samples.parquet"
    pq.write_table(make(), out, compression="zstd")
    print(f"wrote {out}")
