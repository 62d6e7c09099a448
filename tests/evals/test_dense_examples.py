"""The examples PNGs of the dense tasks: which detections a row draws, and the drawn captions."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from cmim.evals import dense_examples
from cmim.tasks.detection import EXAMPLE_MAX, example_detections


def test_confident_detections_are_drawn_best_first():
    scores = torch.tensor([0.3, 0.9, 0.55, 0.1])
    assert example_detections(scores, objects=1).tolist() == [1, 2]      # both >= 0.5, best first


def test_a_young_detector_shows_its_best_guesses_one_per_object():
    scores = torch.tensor([0.12, 0.31, 0.07, 0.2])
    assert example_detections(scores, objects=2).tolist() == [1, 3]
    assert example_detections(scores, objects=0).tolist() == [1]          # no object: still the best one
    assert example_detections(torch.zeros(0), objects=3).tolist() == []   # no detection at all: nothing
    assert len(example_detections(torch.rand(50) * 0.4, objects=30)) == EXAMPLE_MAX


def test_captions_are_written_on_a_dark_strip_at_each_box_and_nothing_else_changes():
    image = np.full((40, 60, 3), 128, np.uint8)
    masks, boxes, labels = np.zeros((1, 40, 60), bool), np.array([[20.0, 10.0, 50.0, 35.0]]), np.array([0])
    colours = dense_examples.palette(3)
    plain = np.asarray(dense_examples.draw_instances(image, masks, boxes, labels, colours, 2.0))
    captioned = np.asarray(dense_examples.draw_instances(image, masks, boxes, labels, colours, 2.0,
                                                         captions=["cat 0.42"]))
    changed = np.argwhere((plain != captioned).any(-1))
    assert len(changed) > 20                                   # some text was drawn ...
    (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
    assert y0 >= 20 - 1 and x0 >= 40 - 1 and y1 < 20 + 20 and x1 < 40 + 80   # ... at the box's corner (x2)
    assert (captioned[changed[:, 0], changed[:, 1]] == 0).all(-1).any()     # on the dark strip


def test_a_caption_at_the_right_edge_stays_inside_the_tile():
    image = np.full((40, 60, 3), 128, np.uint8)
    colours = dense_examples.palette(3)
    args = (image, np.zeros((1, 40, 60), bool), np.array([[55.0, 5.0, 60.0, 20.0]]), np.array([1]), colours, 2.0)
    plain = np.asarray(dense_examples.draw_instances(*args))
    captioned = np.asarray(dense_examples.draw_instances(*args, captions=["Sneaker 0.93"]))
    changed = np.argwhere((plain != captioned).any(-1))
    text_width = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), "Sneaker 0.93")[2]
    assert changed[:, 1].min() < 110 - 40                                  # shifted left of the box's corner ...
    assert changed[:, 1].max() - changed[:, 1].min() + 1 >= text_width     # ... so none of the text is cut off
