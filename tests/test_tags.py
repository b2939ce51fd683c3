"""Untrusted text becomes safe tags the same way everywhere."""

from __future__ import annotations

import pytest

from tbhooks.run import safe_tag


@pytest.mark.parametrize(
    ("parts", "tag"),
    [
        (("pr_curves", "T-shirt/top"), "pr_curves/T-shirt/top"),
        (("pr_curves", "ankle boot"), "pr_curves/ankle_boot"),
        (("weights", "layer\t1\nbias"), "weights/layer_1_bias"),
        (("eval", "précision ✓"), "eval/pr_cision_"),
        (("a", ""), "a/_"),
        (("a", "/lead/"), "a/lead"),
    ],
)
def test_safe_tag(parts, tag):
    assert safe_tag(*parts) == tag
