"""Annotation: boxes, labels and colours land where the detections are, at any width."""

from __future__ import annotations

import pytest

from hsid.core.errors import PermanentError
from hsid.imaging.annotate import CLASS_COLOURS, Box, annotate, class_colour, sample_picture
from tests.imaging.pictures import decoded, grey_jpeg, is_grey, near

MAX_PIXELS = 50_000_000


PERSON = Box("person", 0.95, x=100, y=150, width=200, height=300)
CAR = Box("car", 0.80, x=500, y=300, width=250, height=150)


def test_boxes_are_drawn_where_the_detections_are_in_their_class_colours() -> None:
    pixels = decoded(annotate(grey_jpeg(), [PERSON, CAR], max_pixels=MAX_PIXELS))

    assert pixels.shape == (600, 800, 3)
    red, blue = CLASS_COLOURS["person"], CLASS_COLOURS["car"]
    # the person's box: its left and right edges and its bottom edge are red
    assert near(pixels[300, 100], red) and near(pixels[300, 300], red)
    assert near(pixels[450, 200], red)
    # the car's: blue edges
    assert near(pixels[375, 500], blue) and near(pixels[375, 750], blue)
    assert near(pixels[450, 600], blue)
    # inside and outside the boxes the picture is untouched
    assert is_grey(pixels[300, 200]) and is_grey(pixels[375, 625])
    assert is_grey(pixels[50, 700]) and is_grey(pixels[550, 50])


def test_labels_sit_above_their_boxes() -> None:
    pixels = decoded(annotate(grey_jpeg(), [PERSON], max_pixels=MAX_PIXELS))

    label_band = pixels[132:147, 102:150]  # just above the box's top-left corner
    red = CLASS_COLOURS["person"]
    filled = [near(pixel, red) for row in label_band for pixel in row]
    assert sum(filled) > 0.5 * len(filled), "a label in the class colour stands above the box"
    assert not all(filled), "with text on it"
    assert is_grey(pixels[140, 250]), "and no wider than its text"


def test_a_width_scales_the_picture_and_its_boxes_together() -> None:
    pixels = decoded(annotate(grey_jpeg(), [PERSON], max_pixels=MAX_PIXELS, width=400))

    assert pixels.shape == (300, 400, 3)
    red = CLASS_COLOURS["person"]
    assert near(pixels[150, 50], red) and near(pixels[150, 150], red)  # x 100, 300 halved
    assert near(pixels[225, 100], red)  # the bottom edge, y 450 halved
    assert is_grey(pixels[150, 100]) and is_grey(pixels[150, 250])


def test_a_picture_is_never_made_wider_than_the_original() -> None:
    assert decoded(annotate(grey_jpeg(), [], max_pixels=MAX_PIXELS, width=4000)).shape == (
        600, 800, 3)


def test_boxes_reaching_past_the_edges_are_clipped_not_refused() -> None:
    box = Box("dog", 0.7, x=-50, y=500, width=2000, height=500)
    pixels = decoded(annotate(grey_jpeg(), [box], max_pixels=MAX_PIXELS))
    assert near(pixels[550, 0], CLASS_COLOURS["dog"])  # the left edge, clipped to the image


def test_every_class_has_one_colour_of_its_own() -> None:
    assert class_colour("person") == class_colour("person") != class_colour("car")
    assert class_colour("umbrella") == class_colour("umbrella")
    assert len({class_colour(name) for name in (*CLASS_COLOURS, "umbrella")}) == len(
        CLASS_COLOURS) + 1


def test_what_is_not_an_image_is_refused_with_the_reason() -> None:
    with pytest.raises(PermanentError):
        annotate(b"\xff\xd8\xff\xe0not really a jpeg\xff\xd9", [PERSON], max_pixels=MAX_PIXELS)


def test_the_sample_picture_shows_a_person_box() -> None:
    pixels = decoded(sample_picture(640))
    assert pixels.shape == (360, 640, 3)
    red = CLASS_COLOURS["person"]
    assert sum(near(pixel, red) for row in pixels[::2, ::2] for pixel in row) > 100
