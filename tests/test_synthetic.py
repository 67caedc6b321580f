"""The synthetic world must be reproducible item by item, and its captions must name the label."""

import json

from crossgap_index.datasets.synthetic import (
    CLASS_NAMES,
    COLOUR_SYNONYMS,
    IMAGE_SIZE,
    SHAPE_SYNONYMS,
    class_prompts,
    export_folder,
    generate,
)


def test_classes_cover_every_colour_shape_pair():
    assert len(CLASS_NAMES) == len(set(CLASS_NAMES)) == len(COLOUR_SYNONYMS) * len(SHAPE_SYNONYMS) >= 48
    assert len(class_prompts()) == len(CLASS_NAMES)
    assert "a photo of an orange circle" in class_prompts()


def test_same_seed_same_items_and_prefix_property():
    first, again = generate(7, 12), generate(7, 12)
    assert first == again
    assert generate(7, 5) == first[:5]
    assert [it.image for it in generate(8, 12)] != [it.image for it in first]


def test_items_are_rgb_images_with_consistent_labels():
    for item in generate(3, 20):
        assert item.image.mode == "RGB" and item.image.size == (IMAGE_SIZE, IMAGE_SIZE)
        assert CLASS_NAMES[item.label] == item.class_name


def test_captions_name_the_dominant_colour_and_shape():
    items = generate(11, 60)
    for item in items:
        colour, shape = item.class_name.split(" ")
        assert len(item.captions) >= 3 and len(set(item.captions)) > 1
        for caption in item.captions:
            assert any(word in caption for word in COLOUR_SYNONYMS[colour]), caption
            assert any(word in caption for word in SHAPE_SYNONYMS[shape]), caption
    assert len({c for it in items for c in it.captions}) > 200  # varied, not one template


def test_export_writes_class_folders_and_caption_lines(tmp_path):
    out = export_folder(tmp_path / "world", seed=5, n=10)
    items = generate(5, 10)
    for i, item in enumerate(items):
        path = out / item.class_name.replace(" ", "_") / f"5_{i}.png"
        assert path.is_file()
    lines = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert len(lines) == sum(len(it.captions) for it in items)
    assert lines[0] == {"text": items[0].captions[0], "group": "5_0", "label": items[0].class_name}
    assert {line["group"] for line in lines} == {f"5_{i}" for i in range(10)}
