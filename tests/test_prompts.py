"""Prompt templates and ensembling: one helper, the same vectors at every call site."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from audioclip.prompts import check_template, text_classifier


@pytest.fixture(scope="module")
def model():
    from audioclip.model import AudioCLIP

    torch.manual_seed(0)
    return AudioCLIP("AudioCLIP-tiny").eval()


@pytest.mark.parametrize("template", ["{}", "the sound of {}", "{} barking.", "{{literal}} {}", "{{{}}}", "a {}}}"])
def test_check_template_accepts(template):
    check_template(template)
    assert "X" in template.format("X")


@pytest.mark.parametrize(
    "template, message",
    [
        ("a photo", "no '\\{\\}'"),
        ("", "no '\\{\\}'"),
        ("{{}}", "no '\\{\\}'"),  # escaped: a literal "{}", no placeholder
        ("{} and {}", "2 placeholders"),
        ("{x}", "bare"),
        ("{0}", "bare"),
        ("{:>10}", "bare"),
        ("{!r}", "bare"),
        ("{", "unbalanced"),
        ("}", "unbalanced"),
        ("{} }", "unbalanced"),
        ("{}{", "unbalanced"),
    ],
)
def test_check_template_rejects(template, message):
    with pytest.raises(ValueError, match=message) as info:
        check_template(template)
    assert "\n" not in str(info.value)


def test_templates_are_checked_before_the_model_is_used():
    # no model needed: every template is checked before anything is encoded
    with pytest.raises(ValueError, match="placeholders"):
        text_classifier(None, ["dog"], ["a {}", "{} {}"])
    with pytest.raises(ValueError, match="at least one template"):
        text_classifier(None, ["dog"], [])


def test_importing_prompts_does_not_import_torch():
    code = "import sys, audioclip.prompts, audioclip.io; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- the vectors -------------------------------------------------------------------------

LABELS = ["dog", "rain", "a siren", "dog barking"]
TEMPLATES = ["the sound of {}", "{}", "a recording of {}."]


def _by_hand(model, labels, templates):
    """CLIP's prompt ensembling written out: unit prompt vectors, mean over templates, unit again."""
    per_template = [F.normalize(model.encode_text([t.format(label) for label in labels]).float(), dim=-1)
                    for t in templates]
    return F.normalize(torch.stack(per_template).mean(dim=0), dim=-1)


def test_text_classifier_is_clip_prompt_ensembling(model):
    with torch.no_grad():
        vectors = text_classifier(model, LABELS, TEMPLATES)
        expected = _by_hand(model, LABELS, TEMPLATES)
    assert vectors.shape == (len(LABELS), model.embed_dim) and vectors.dtype == torch.float32
    assert torch.equal(vectors, expected)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(len(LABELS)), atol=1e-6)
    # also by a second, independent route: the mean of the unit prompt vectors of each label
    with torch.no_grad():
        for label, vector in zip(LABELS, vectors):
            prompts = F.normalize(model.encode_text([t.format(label) for t in TEMPLATES]).float(), dim=-1)
            assert torch.allclose(vector, F.normalize(prompts.mean(dim=0), dim=0), atol=1e-6)


def test_text_classifier_options(model):
    with torch.no_grad():
        one = text_classifier(model, LABELS, "the sound of {}", renormalize=False)
        plain = F.normalize(model.encode_text([f"the sound of {x}" for x in LABELS]).float(), dim=-1)
        assert torch.equal(one, plain)  # one template, not renormalised: the prompt vectors themselves
        # batch size changes at most the last bits
        small = text_classifier(model, LABELS, TEMPLATES, batch_size=1)
        assert torch.allclose(small, text_classifier(model, LABELS, TEMPLATES), atol=1e-6)
        mean = text_classifier(model, LABELS, TEMPLATES, renormalize=False)
        assert torch.allclose(F.normalize(mean, dim=-1), small, atol=1e-6)
        assert (mean.norm(dim=-1) < 1).all()  # a mean of different unit vectors is shorter
    with pytest.raises(ValueError, match="no labels"):
        text_classifier(model, [], TEMPLATES)
    with pytest.raises(ValueError, match="no '\\{\\}'"):
        text_classifier(model, LABELS, ["a photo"])
    with pytest.raises(ValueError, match="batch_size"):
        text_classifier(model, LABELS, batch_size=0)


class _Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.seen: list[str] = []

    def encode_text(self, texts):
        self.seen += texts
        return self.model.encode_text(texts)


def test_duplicate_prompts_are_encoded_once(model):
    counting = _Counting(model)
    labels = ["dog", "rain", "dog", "cat"]
    templates = ["a {}", "{}", "a {}"]  # the third template repeats the first one's prompts
    with torch.no_grad():
        vectors = text_classifier(counting, labels, templates)
        expected = _by_hand(model, ["dog", "rain", "cat"], templates)
    assert sorted(counting.seen) == sorted(set(counting.seen)) and len(counting.seen) == 6
    assert torch.equal(vectors, expected[[0, 1, 0, 2]])  # repeated labels get equal rows, in the caller's order


def test_gradients_reach_the_text_head(model):
    vectors = text_classifier(model, LABELS[:2], "{}", renormalize=False)
    vectors.sum().backward()
    grads = [p.grad for p in model.transformer.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    assert grads and any(g.abs().sum() > 0 for g in grads)


# -- the call sites ------------------------------------------------------------------------


def test_inference_text_classifier_agrees(model):
    from audioclip.inference import text_classifier as zero_shot_classes

    with torch.no_grad():
        expected = _by_hand(model, LABELS, TEMPLATES)
        single = _by_hand(model, LABELS, ["{}"])
    classes = zero_shot_classes(model, LABELS, TEMPLATES)
    assert torch.equal(classes, expected)
    assert not classes.is_inference() and not classes.requires_grad  # an ordinary tensor, as before
    assert torch.equal(zero_shot_classes(model, LABELS), single)  # one template: still renormalised, as before
    with pytest.raises(ValueError, match="distinct"):
        zero_shot_classes(model, ["dog", "dog"])


def test_evaluate_class_vectors_agree(model):
    from audioclip.evaluate.embed import Encoder

    encoder = Encoder(model, "audioclip", "tiny", "tiny@0", torch.device("cpu"))
    texts = LABELS + ["rain"]  # evaluation allows repeated class names
    with torch.no_grad():
        expected = _by_hand(model, LABELS, TEMPLATES)
    vectors = encoder.class_vectors(texts, TEMPLATES)
    assert torch.equal(vectors, expected[[0, 1, 2, 3, 1]])
    assert not vectors.is_inference()
    # in chunks, as before: each template's prompts `chunk` at a time
    with torch.no_grad():
        chunked = [F.normalize(torch.cat([model.encode_text([t.format(x) for x in LABELS][i:i + 3]).float()
                                          for i in range(0, len(LABELS), 3)]), dim=-1) for t in TEMPLATES]
    assert torch.equal(encoder.class_vectors(LABELS, TEMPLATES, chunk=3),
                       F.normalize(torch.stack(chunked).mean(dim=0), dim=-1))


def test_train_class_text_features_agree(model):
    from audioclip.train.objectives import class_text_features

    with torch.no_grad():
        features = class_text_features(model, LABELS, "the sound of {}")
        # what training always used: the unit prompt vectors, not renormalised again
        expected = F.normalize(model.encode_text([f"the sound of {x}" for x in LABELS]).float(), dim=-1)
        assert torch.equal(features, expected)
        assert torch.allclose(features, text_classifier(model, LABELS, "the sound of {}"), atol=1e-6)
