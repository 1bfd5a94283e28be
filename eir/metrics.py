"""Report-generation metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr) over a whole split.

Scores come from pycocoevalcap 1.2 and are corpus-level, as that package computes them.
BLEU pools n-gram counts over all pairs (brevity penalty option "closest"). CIDEr takes its
document frequencies from all references of the split. METEOR aggregates the statistics of
all pairs in one `EVAL` request to the METEOR 1.5 jar. ROUGE-L is the mean of the per-pair
F-scores (beta 1.2). pycocoevalcap's `Cider` is the CIDEr-D variant (clipped counts,
Gaussian length penalty with sigma 6, scaled by 10).

Two text protocols decide what the scorers see:

- `"raw"`: both sides lower-cased and split by `tokenize_report` (punctuation becomes its
  own token, decimal numbers such as "3.5" and hyphenated words such as "t11-t12" stay
  whole). References are never truncated and never mapped through a model vocabulary.
- `"r2gen"`: both sides cleaned by `clean_report_r2gen`, the IU X-ray cleaning of R2Gen
  (Chen et al., EMNLP 2020, github.com/cuhksz-nlp/R2Gen, `modules/tokenizers.py`), and
  references cut to their first `R2GEN_MAX_REFERENCE_TOKENS` (59) tokens. R2Gen stores
  each IU report as BOS + tokens + EOS cut to `max_seq_length` 60, and decodes the
  references for scoring without the BOS, so 59 report tokens remain. Predictions are
  cleaned but not truncated. This protocol only exists to compare with published IU X-ray
  numbers. It removes every "." inside a sentence, so "3.5 cm" becomes "35 cm".
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import subprocess
import warnings
from collections.abc import Sequence
from typing import Literal, Union

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

logger = logging.getLogger(__name__)

PROTOCOLS = ("raw", "r2gen")
PROTOCOL_DESCRIPTIONS = {
    "raw": "lower-cased, punctuation split off, references never truncated",
    "r2gen": "R2Gen IU X-ray cleaning, references truncated to 59 tokens",
}
SCORE_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")

# R2Gen's IU X-ray setting: `max_seq_length` 60 counts BOS, which is dropped before scoring.
R2GEN_MAX_SEQ_LENGTH = 60
R2GEN_MAX_REFERENCE_TOKENS = R2GEN_MAX_SEQ_LENGTH - 1

# Stands in for a prediction without tokens, which the METEOR jar and the BLEU scorer do not
# handle. It contains no separator that METEOR's `-norm` tokenizer could split, and
# `compute_report_metrics` rejects references that contain it, so it never matches.
EMPTY_PREDICTION_TOKEN = "emptypredictionplaceholder"

MetricValue = Union[float, int, str]

# A token is a word (letters/digits, "_" excluded) or a decimal number, optionally joined to
# more of them by hyphens ("t11-t12", "x-ray", "3.5-cm"), or else a single punctuation mark.
_WORD = r"(?:\d+(?:\.\d+)+|[^\W_]+)"
_TOKEN_PATTERN = re.compile(rf"{_WORD}(?:-{_WORD})*|[^\w\s]|_")

# Characters R2Gen's sentence cleaner removes. Its character class is written
# `[.,?;*!%^&_+():-\[\]{}]`, where `:-\[` is a range (":" to "["), so it removes ; < = > ? @
# and A-Z (already lower-cased) but keeps "-".
_R2GEN_REMOVED_CHARACTERS = re.compile(r"[.,?;*!%^&_+():<=>@\[\]{}]")


class MeteorUnavailableError(RuntimeError):
    """The METEOR 1.5 jar cannot run, usually because no `java` executable is on PATH."""


def tokenize_report(text: str) -> list[str]:
    """Lower-case `text` and split it into words, decimal numbers and punctuation marks."""
    return _TOKEN_PATTERN.findall(text.lower())


def clean_report_r2gen(report: str) -> str:
    """Clean an IU X-ray report the way R2Gen's `clean_report_iu_xray` does.

    Steps: replace ".." by "." (three passes), drop "1. " and rewrite the list markers
    ". 2. " .. ". 5. " and " 2. " .. " 5. " to ". ", lower-case, split sentences at ". ",
    delete `"`, `/`, `\\` and `'`, strip each sentence, remove the characters of
    `_R2GEN_REMOVED_CHARACTERS`, and join the sentences with " . " plus a final " .".
    Empty sentences are kept, as in R2Gen. Unlike R2Gen's string, the result has its
    whitespace collapsed to single spaces, which gives the same `str.split()` tokens.
    """
    text = report
    for _ in range(3):
        text = text.replace("..", ".")
    text = text.replace("1. ", "")
    for number in "2345":
        text = text.replace(f". {number}. ", ". ")
    for number in "2345":
        text = text.replace(f" {number}. ", ". ")
    sentences = text.strip().lower().split(". ")

    cleaned_sentences = []
    for sentence in sentences:
        for character in ('"', "/", "\\", "'"):
            sentence = sentence.replace(character, "")
        sentence = _R2GEN_REMOVED_CHARACTERS.sub("", sentence.strip().lower())
        cleaned_sentences.append(sentence)

    cleaned = " . ".join(cleaned_sentences) + " ."
    return " ".join(cleaned.split())


class MeteorScorer:
    """A running METEOR 1.5 process (pycocoevalcap's `Meteor`) that can score several corpora.

    Starting the jar and loading its paraphrase table takes several seconds (about 6 s on
    2 CPU cores, measured), so callers that score several systems should keep one scorer open. Use it as a context manager or call
    `close()`, which ends the Java process.
    """

    def __init__(self) -> None:
        if shutil.which("java") is None:
            raise MeteorUnavailableError(
                "METEOR needs a Java runtime, but no `java` executable was found on PATH. "
                "Install Java 8 or newer, or pass include_meteor=False (or 'auto') to skip METEOR."
            )
        from pycocoevalcap.meteor.meteor import Meteor

        try:
            self._meteor = Meteor()
        except OSError as error:
            raise MeteorUnavailableError(f"Failed to start the METEOR jar with `java`: {error}") from error
        self._closed = False
        logger.info("Started the METEOR 1.5 Java process (pid %d)", self._meteor.meteor_p.pid)

    def score(self, predictions: Sequence[str], references: Sequence[str]) -> float:
        """Return the corpus METEOR of already processed predictions against one reference each."""
        if self._closed:
            raise RuntimeError("This MeteorScorer is closed; create a new one to score again.")
        if len(predictions) != len(references):
            raise ValueError(
                f"predictions and references must have the same length, "
                f"got {len(predictions)} predictions and {len(references)} references."
            )
        # "|||" separates fields in the jar's input protocol; pycocoevalcap only removes it
        # from hypotheses.
        references_by_id = {index: [text.replace("|||", "")] for index, text in enumerate(references)}
        predictions_by_id = {index: [text] for index, text in enumerate(predictions)}
        try:
            corpus_score, _ = self._meteor.compute_score(references_by_id, predictions_by_id)
        except (ValueError, BrokenPipeError) as error:
            # pycocoevalcap leaves its lock held when the jar fails, and its `__del__` would then
            # wait for that lock forever.
            if self._meteor.lock.locked():
                self._meteor.lock.release()
            stderr_text = self._stop_process()
            raise MeteorUnavailableError(
                f"The METEOR jar failed while scoring {len(predictions)} pairs: {error}. "
                f"Java stderr: {stderr_text.strip()[-2000:] or '(empty)'}"
            ) from error
        return float(corpus_score)

    def close(self) -> None:
        """End the Java process. Calling it again does nothing."""
        if not self._closed:
            self._stop_process()

    def _stop_process(self) -> str:
        """End the Java process and return what it wrote to stderr."""
        self._closed = True
        process = self._meteor.meteor_p
        try:
            process.stdin.close()
        except BrokenPipeError:
            pass  # The process already exited and left unread input behind.
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            logger.warning("The METEOR process (pid %d) did not exit after its input closed; killing it", process.pid)
            process.kill()
            process.wait()
        stderr_text = process.stderr.read().decode(errors="replace")
        process.stdout.close()
        process.stderr.close()
        logger.debug("Stopped the METEOR process (pid %d, exit code %s)", process.pid, process.returncode)
        return stderr_text

    def __enter__(self) -> MeteorScorer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def compute_report_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    protocol: str = "raw",
    include_meteor: bool | Literal["auto"] = True,
    max_reference_tokens: int | None = None,
    meteor_scorer: MeteorScorer | None = None,
) -> dict[str, MetricValue]:
    """Score generated reports against one reference each, over the whole split at once.

    Args:
        predictions: generated reports, one per sample.
        references: ground-truth reports, in the same order.
        protocol: `"raw"` or `"r2gen"` (see the module docstring).
        include_meteor: True runs METEOR and raises `MeteorUnavailableError` without Java.
            `"auto"` runs it when `java` is on PATH and otherwise warns and reports NaN.
            False skips it and reports NaN.
        max_reference_tokens: reference cut-off for `"r2gen"`, default
            `R2GEN_MAX_REFERENCE_TOKENS` (59). `"raw"` never truncates and rejects a value.
        meteor_scorer: an open scorer to reuse. Without one, a METEOR process is started and
            closed inside this call.

    Returns:
        "BLEU-1" .. "BLEU-4", "METEOR", "ROUGE-L", "CIDEr" and "distinct_fraction" (distinct
        processed predictions / samples) as floats, "num_samples" as int, and "protocol".

    A prediction without tokens is scored as `EMPTY_PREDICTION_TOKEN`, which matches nothing.
    """
    _check_texts(predictions, "predictions")
    _check_texts(references, "references")
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references must have the same length, "
            f"got {len(predictions)} predictions and {len(references)} references."
        )
    if not predictions:
        raise ValueError("predictions and references are empty; at least one sample is needed.")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
    if include_meteor not in (True, False, "auto"):
        raise ValueError(f"include_meteor must be True, False or 'auto', got {include_meteor!r}.")

    processed_predictions, processed_references = _process_texts(
        predictions, references, protocol, max_reference_tokens
    )
    predictions_by_id = {index: [text] for index, text in enumerate(processed_predictions)}
    references_by_id = {index: [text] for index, text in enumerate(processed_references)}

    bleu_scores, _ = Bleu(4).compute_score(references_by_id, predictions_by_id, verbose=0)
    rouge_score, _ = Rouge().compute_score(references_by_id, predictions_by_id)
    cider_score, _ = Cider().compute_score(references_by_id, predictions_by_id)
    meteor_score = _score_meteor(processed_predictions, processed_references, include_meteor, meteor_scorer)

    metrics: dict[str, MetricValue] = {f"BLEU-{n}": float(bleu_scores[n - 1]) for n in range(1, 5)}
    metrics["METEOR"] = meteor_score
    metrics["ROUGE-L"] = float(rouge_score)
    metrics["CIDEr"] = float(cider_score)
    metrics["distinct_fraction"] = len(set(processed_predictions)) / len(processed_predictions)
    metrics["num_samples"] = len(processed_predictions)
    metrics["protocol"] = protocol
    return metrics


def _check_texts(texts: Sequence[str], name: str) -> None:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a sequence of strings, got {type(texts).__name__}.")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{index}] must be a string, got {type(text).__name__}: {text!r:.80}.")


def _process_texts(
    predictions: Sequence[str],
    references: Sequence[str],
    protocol: str,
    max_reference_tokens: int | None,
) -> tuple[list[str], list[str]]:
    """Apply the protocol and return space-joined token strings for both sides."""
    if protocol == "raw":
        if max_reference_tokens is not None:
            raise ValueError(
                f"The 'raw' protocol never truncates references, got max_reference_tokens={max_reference_tokens}. "
                "Use protocol='r2gen' for truncated references."
            )
        reference_tokens = [tokenize_report(text) for text in references]
        prediction_tokens = [tokenize_report(text) for text in predictions]
    else:
        if max_reference_tokens is None:
            max_reference_tokens = R2GEN_MAX_REFERENCE_TOKENS
        if max_reference_tokens < 1:
            raise ValueError(f"max_reference_tokens must be positive, got {max_reference_tokens}.")
        # NOTE: R2Gen also maps reference words seen fewer than 3 times in its training split to
        # "<unk>". That step needs the training vocabulary and is not reproduced here.
        reference_tokens = [clean_report_r2gen(text).split()[:max_reference_tokens] for text in references]
        prediction_tokens = [clean_report_r2gen(text).split() if text.strip() else [] for text in predictions]

    for index, tokens in enumerate(reference_tokens):
        if not tokens:
            raise ValueError(f"references[{index}] has no tokens after {protocol!r} processing: {references[index]!r}.")
        if EMPTY_PREDICTION_TOKEN in tokens:
            raise ValueError(
                f"references[{index}] contains the reserved placeholder {EMPTY_PREDICTION_TOKEN!r}, "
                "which stands for empty predictions."
            )

    empty_count = sum(1 for tokens in prediction_tokens if not tokens)
    if empty_count:
        logger.warning(
            "%d of %d predictions are empty; they are scored as %r, which matches no reference",
            empty_count,
            len(prediction_tokens),
            EMPTY_PREDICTION_TOKEN,
        )
    processed_predictions = [" ".join(tokens) if tokens else EMPTY_PREDICTION_TOKEN for tokens in prediction_tokens]
    processed_references = [" ".join(tokens) for tokens in reference_tokens]
    return processed_predictions, processed_references


def _score_meteor(
    predictions: list[str],
    references: list[str],
    include_meteor: bool | Literal["auto"],
    meteor_scorer: MeteorScorer | None,
) -> float:
    if include_meteor is False:
        return math.nan
    if meteor_scorer is not None:
        return meteor_scorer.score(predictions, references)
    if include_meteor == "auto" and shutil.which("java") is None:
        warnings.warn(
            "No `java` executable on PATH, so METEOR is reported as NaN. Install Java 8 or newer to compute it.",
            RuntimeWarning,
            stacklevel=3,
        )
        return math.nan
    with MeteorScorer() as scorer:
        return scorer.score(predictions, references)


def format_metrics_table(rows: dict[str, dict], protocol: str) -> str:
    """Render one Markdown table row per system, with the protocol in the header line.

    Each row is a metrics dict as `compute_report_metrics` returns it. A row with a "std"
    dict shows "mean ± std" cells, and one with "seeds" adds the seed count to its label.
    Values have 3 decimals, and NaN (a skipped METEOR) shows as "n/a".
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
    columns = [*SCORE_NAMES, "distinct_fraction"]
    headers = [*SCORE_NAMES, "distinct"]

    lines = [
        f"Report metrics, protocol `{protocol}` ({PROTOCOL_DESCRIPTIONS[protocol]}):",
        "",
        "| system | " + " | ".join(headers) + " |",
        "|---|" + "---:|" * len(headers),
    ]
    for system, row in rows.items():
        row_protocol = row.get("protocol", protocol)
        if row_protocol != protocol:
            raise ValueError(
                f"Row {system!r} was computed with protocol {row_protocol!r}, but the table is for {protocol!r}."
            )
        missing = [column for column in columns if column not in row]
        if missing:
            raise ValueError(f"Row {system!r} is missing the metrics {missing}.")
        std = row.get("std", {})
        label = system
        if "seeds" in row:
            label = f"{system} (mean ± std over {len(row['seeds'])} seeds)"
        cells = [_format_cell(row[column], std.get(column)) for column in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _format_cell(value: float, std: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if std is None or math.isnan(std):
        return f"{value:.3f}"
    return f"{value:.3f} ± {std:.3f}"
