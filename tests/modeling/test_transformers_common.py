"""transformers' own common model tests (`ModelTesterMixin` of `tests/test_modeling_common.py`) run against our
classes, with our own small model tester.

Nothing of transformers' test suite lives in this repo: at test time the source distribution of the *installed*
transformers version is fetched from the package index (`pip download transformers==<version> --no-binary :all:`),
and its `tests/test_modeling_common.py` is extracted into a git-ignored cache (`.cache/transformers-tests/<version>/`)
and imported from there. The sdist leaves out two modules that file imports, `tests/exporters/test_export.py` and
`tests/generation/test_utils.py`: they are replaced by empty mixins (transformers' export tests and generation tests
do not run here; `test_compile_export.py` and `test_onnx.py` test export). Without the index (or the `parameterized`
package that file imports) the module is skipped with the reason.

Tests that cannot apply to an ALiBi encoder on unpadded tokens are skipped with their reason in `SKIPS`.
"""

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unittest
from pathlib import Path

import pytest
import torch
import transformers

from mosaic_bert import BertConfig
from mosaic_bert.modeling import modeling_bert as mb

VERSION = transformers.__version__
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "transformers-tests" / VERSION
PACKAGE = "hf_common_tests"  # the extracted files' package (they import each other relatively)
STUBS = {
    "exporters/test_export.py": '"""Left out of the sdist; export is tested in test_compile_export.py."""\n\n\n'
    "class ExportTesterMixin:\n    pass\n",
    "generation/test_utils.py": '"""Left out of the sdist; an encoder does not generate."""\n\n\n'
    "class GenerationTesterMixin:\n    pass\n",
}


def _fetch_common_tests() -> Path:
    """The cached package dir with transformers' test_modeling_common.py of the installed version (fetched once)."""
    package = CACHE / PACKAGE
    if (package / "test_modeling_common.py").exists():
        return CACHE
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", f"transformers=={VERSION}", "--no-deps", "--no-binary",
               ":all:", "--disable-pip-version-check", "-q", "--retries", "1", "--timeout", "20", "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            pytest.skip("pip download of transformers' sdist timed out (package index unreachable?)",
                        allow_module_level=True)
        archives = list(Path(tmp).glob("transformers-*.tar.gz"))
        if proc.returncode or not archives:
            pytest.skip(f"cannot fetch transformers=={VERSION}'s sdist from the package index: "
                        f"{proc.stderr.strip()[-300:]}", allow_module_level=True)
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=CACHE.parent))  # same filesystem: the rename below is atomic
        with tarfile.open(archives[0]) as tar:
            member = tar.getmember(f"transformers-{VERSION}/tests/test_modeling_common.py")
            (staging / PACKAGE).mkdir(parents=True)
            (staging / PACKAGE / "test_modeling_common.py").write_bytes(tar.extractfile(member).read())
            licence = tar.getmember(f"transformers-{VERSION}/LICENSE")
            (staging / PACKAGE / "LICENSE").write_bytes(tar.extractfile(licence).read())
    for rel, text in {"__init__.py": "", "exporters/__init__.py": "", "generation/__init__.py": "", **STUBS}.items():
        (staging / PACKAGE / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / PACKAGE / rel).write_text(text)
    try:
        os.replace(staging, CACHE)  # atomic: a concurrent run either sees the whole dir or fetches its own
    except OSError:  # another run put it there first
        shutil.rmtree(staging, ignore_errors=True)
    return CACHE


def _import_common():
    pytest.importorskip("parameterized", reason="transformers' test_modeling_common.py imports parameterized "
                                                "(pip install parameterized, in the dev extra)")
    root = _fetch_common_tests()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(f"{PACKAGE}.test_modeling_common")


common = _import_common()
ids_tensor, random_attention_mask = common.ids_tensor, common.random_attention_mask

# HA's heads join when they exist in the file
HEADS = ("BertModel", "BertForMaskedLM", "BertForSequenceClassification", "BertForTokenClassification",
         "BertForQuestionAnswering", "BertForMultipleChoice")
ALL_MODEL_CLASSES = tuple(getattr(mb, name) for name in HEADS if hasattr(mb, name))


class MosaicBertModelTester:
    """Sizes and inputs for the common tests: a 2-layer, 4-head encoder with hidden 32 on (3, 7) token batches."""

    def __init__(self, parent, batch_size=3, seq_length=7, vocab_size=99, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=37, type_vocab_size=2, num_labels=3, num_choices=4):
        self.parent = parent
        self.batch_size, self.seq_length = batch_size, seq_length
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.intermediate_size, self.type_vocab_size = intermediate_size, type_vocab_size
        self.num_labels, self.num_choices = num_labels, num_choices
        self.type_sequence_label_size = num_labels
        self.is_training = True

    def get_config(self):
        return BertConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                          num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
                          intermediate_size=self.intermediate_size, type_vocab_size=self.type_vocab_size,
                          hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, alibi_starting_size=64,
                          initializer_range=0.02, attention_backend="sdpa")  # SDPA by default, as the tests expect

    def prepare_config_and_inputs_for_common(self):
        shape = [self.batch_size, self.seq_length]
        inputs = {
            "input_ids": ids_tensor(shape, self.vocab_size),
            "token_type_ids": ids_tensor(shape, self.type_vocab_size),
            "attention_mask": random_attention_mask(shape),
        }
        return self.get_config(), inputs


@contextlib.contextmanager
def _registered_with_auto_classes():
    """Our config and model classes known to AutoConfig / AutoModel / AutoModelForSequenceClassification for a while."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    pairs = [(AutoModel, mb.BertModel), (AutoModelForSequenceClassification, mb.BertForSequenceClassification)]
    AutoConfig.register(BertConfig.model_type, BertConfig, exist_ok=True)
    for auto, cls in pairs:
        auto.register(BertConfig, cls, exist_ok=True)
    try:
        yield
    finally:
        CONFIG_MAPPING._extra_content.pop(BertConfig.model_type, None)
        for auto, _ in pairs:
            auto._model_mapping._extra_content.pop(BertConfig, None)


# test name -> why it cannot apply to MosaicBERT
SKIPS = {
    "test_model_weights_reload_no_missing_tied_weights": "from_pretrained refuses a checkpoint without the encoder's "
    "weights, naming them, instead of starting them fresh (test_modeling.py::"
    "test_loading_a_mismatched_checkpoint_names_the_keys)",
}


class MosaicBertCommonTest(common.ModelTesterMixin, unittest.TestCase):
    all_model_classes = ALL_MODEL_CLASSES
    test_resize_embeddings = True

    def setUp(self):
        self.model_tester = MosaicBertModelTester(self)

    def test_load_with_mismatched_shapes(self):
        """transformers' test loads our saved folder through AutoModel / AutoModelForSequenceClassification: run it
        with our classes registered with the Auto classes (the standard way to make a custom model_type known
        without remote code), unregistered afterwards."""
        with _registered_with_auto_classes():
            super().test_load_with_mismatched_shapes()

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        """As transformers', but token labels are -100 at padding: the model refuses labels there (a labelling
        mistake it names); transformers' zeros would be targets at padding."""
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels)
        labels, mask = inputs.get("labels"), inputs.get("attention_mask")
        if labels is not None and mask is not None and labels.shape == mask.shape:
            inputs["labels"] = labels.masked_fill(mask == 0, -100)
        return inputs


for _name, _reason in SKIPS.items():
    setattr(MosaicBertCommonTest, _name, unittest.skip(_reason)(getattr(MosaicBertCommonTest, _name)))
