"""The main job's closing fill-mask demo: a word in braces is masked, and the line says whether the top answer is it."""

from mosaic_bert.train import cli


def test_demo_masks_the_braced_word_and_grades_the_top_answer(monkeypatch):
    seen = []

    def fake_fill_masks(folder, texts, top_k=5):
        seen.extend(texts)
        return [[("list", 0.6), ("dict", 0.1)], [("the", 0.3), ("a", 0.2)]]

    monkeypatch.setattr(cli, "fill_masks", fake_fill_masks)
    lines = cli.fill_mask_demo("folder", ["a mutable sequence (such as a {List}).", "raises an {exception}."])
    assert seen == ["a mutable sequence (such as a [MASK]).", "raises an [MASK]."]
    assert lines[0].endswith("list (0.60), dict (0.10)   right")
    assert lines[1].endswith("(held-out text: exception)")
    assert lines[-1] == "[fill-mask] top answer = the held-out word for 1 of 2 sentences"


def test_demo_of_a_plain_mask_sentence_is_not_graded(monkeypatch):
    monkeypatch.setattr(cli, "fill_masks", lambda folder, texts, top_k=5: [[("paris", 0.9)]])
    assert cli.fill_mask_demo("folder", "[MASK] is the capital of france.") == [
        "[fill-mask] [MASK] is the capital of france.\n            -> paris (0.90)"]
