"""Write a small RL prompt parquet in the published Metis-RL layout, built with ``datasets``
feature types from the public description alone (independent of the test fixtures):

    data_source: string, ability: string
    prompt: list of {content: string, role: string}      (system + user; <image> in the user text)
    images: list of Image()                              (stored as {bytes, path})
    reward_model: {ground_truth: string, style: string}  (style "rule")
    extra_info: {answer: string, index: int64, pass8: float64, question: string}

Usage: python scripts/make_rl_sample.py OUT.parquet [--rows N]
then:  python -m metis.train experiment=hdpo_tiny data=metis_rl data.source=OUT.parquet trainer.max_steps=2
"""

from __future__ import annotations

import argparse
import random

import datasets
from PIL import Image, ImageDraw

FEATURES = datasets.Features({
    "data_source": datasets.Value("string"),
    "prompt": datasets.List({"content": datasets.Value("string"), "role": datasets.Value("string")}),
    "images": datasets.List(datasets.Image()),
    "ability": datasets.Value("string"),
    "reward_model": {"ground_truth": datasets.Value("string"), "style": datasets.Value("string")},
    "extra_info": {"answer": datasets.Value("string"), "index": datasets.Value("int64"),
                   "pass8": datasets.Value("float64"), "question": datasets.Value("string")},
})
SYSTEM = "You are a helpful assistant."
# (data_source, ability, question template, answer)
KINDS = [
    ("visual_math", "math", "The figure shows a right triangle with legs {a} and {b}. What is its area?",
     lambda a, b: f"${a * b / 2:g}$"),
    ("chart_choice", "chart", "Which bar is tallest? A. first B. second C. third D. fourth", lambda a, b: "B"),
    ("fine_perception", "perception", "What colour is the small square in the corner?", lambda a, b: "red"),
    ("knowledge_search", "search", "Which museum holds the painting shown?", lambda a, b: "The Louvre"),
    ("multi_select", "chart", "Which panels show a circle? A. top-left B. top-right C. bottom-left D. bottom-right",
     lambda a, b: "A, C"),
]


def image(seed: int) -> Image.Image:
    rng = random.Random(seed)
    img = Image.new("RGB", (96, 96), tuple(rng.randrange(256) for _ in range(3)))
    ImageDraw.Draw(img).rectangle((2, 2, 12, 12), fill="red")
    return img


def build(rows: int) -> datasets.Dataset:
    cols: dict[str, list] = {k: [] for k in FEATURES}
    for i in range(rows):
        source, ability, template, answer = KINDS[i % len(KINDS)]
        a, b = 3 + i % 5, 4 + i % 3
        question = template.format(a=a, b=b)
        cols["data_source"].append(source)
        cols["ability"].append(ability)
        cols["prompt"].append([{"content": SYSTEM, "role": "system"},
                               {"content": f"<image>\n{question}", "role": "user"}])
        cols["images"].append([image(i)])
        cols["reward_model"].append({"ground_truth": answer(a, b), "style": "rule"})
        cols["extra_info"].append({"answer": answer(a, b), "index": 1000 + i, "pass8": (i % 9) / 8,
                                   "question": question})
    return datasets.Dataset.from_dict(cols, features=FEATURES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()
    build(args.rows).to_parquet(args.out)
    print(f"wrote {args.rows} rows to {args.out}")


if __name__ == "__main__":
    main()
