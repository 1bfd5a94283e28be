"""EIR report metrics as a Hugging Face `evaluate` module: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D.

Load it offline from its folder with `evaluate.load("metrics/eir_report_metrics")`. The scores are
those of `eir.metrics.compute_report_metrics`, so the `eir` package must be installed.
"""

# `evaluate` copies this file into its module cache and checks every top-level import line, so
# each import is on its own line and names an installed package.
import datasets
import evaluate
from eir.metrics import PROTOCOLS
from eir.metrics import compute_report_metrics

_DESCRIPTION = """\
Corpus-level report-generation metrics from pycocoevalcap 1.2: BLEU-1..4 (pooled n-gram counts,
brevity penalty "closest"), METEOR 1.5 (Java, one request for the whole corpus), ROUGE-L (mean
per-pair F-score, beta 1.2) and CIDEr-D (document frequencies from the references passed in),
plus the fraction of distinct predictions. Every score is computed over the whole set of
predictions at once, so call `compute` once per split rather than averaging batch scores.

The configuration name selects the text protocol: "raw" (the default, also "default") lower-cases
and splits punctuation off without truncating references; "r2gen" applies the IU X-ray cleaning
of R2Gen and cuts references to 59 tokens, only to compare with published IU X-ray numbers.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: list of generated reports (str), one per study.
    references: list of reference reports (str), in the same order.
    include_meteor: True (default) runs METEOR and raises without Java; "auto" reports NaN and
        warns without Java; False skips METEOR and reports NaN.
    max_reference_tokens: reference cut-off of the "r2gen" protocol (default 59).
Returns:
    "BLEU-1" .. "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "distinct_fraction" (floats),
    "num_samples" (int) and "protocol" (str).
Example:
    >>> metric = evaluate.load("metrics/eir_report_metrics")
    >>> scores = metric.compute(predictions=["no acute disease ."], references=["no acute disease ."],
    ...                         include_meteor=False)
"""

_CITATION = """\
@inproceedings{papineni2002bleu, title={BLEU: a method for automatic evaluation of machine translation},
  author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing}, booktitle={ACL}, year={2002}}
@inproceedings{banerjee2005meteor, title={METEOR: An automatic metric for MT evaluation with improved correlation
  with human judgments}, author={Banerjee, Satanjeev and Lavie, Alon}, booktitle={ACL Workshop}, year={2005}}
@inproceedings{lin2004rouge, title={ROUGE: A package for automatic evaluation of summaries}, author={Lin, Chin-Yew},
  booktitle={Text Summarization Branches Out}, year={2004}}
@inproceedings{vedantam2015cider, title={CIDEr: Consensus-based image description evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi}, booktitle={CVPR}, year={2015}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EirReportMetrics(evaluate.Metric):
    """Corpus-level BLEU-1..4, METEOR, ROUGE-L and CIDEr-D of generated radiology reports."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                }
            ),
            codebase_urls=["https://github.com/salaniz/pycocoevalcap"],
        )

    def _protocol(self) -> str:
        protocol = "raw" if self.config_name == "default" else self.config_name
        if protocol not in PROTOCOLS:
            raise ValueError(
                f"Unknown configuration name {self.config_name!r}: expected 'default' or one of {PROTOCOLS}. "
                'Load it as evaluate.load(path, "r2gen") for the R2Gen protocol.'
            )
        return protocol

    def _compute(self, predictions, references, include_meteor=True, max_reference_tokens=None):
        return compute_report_metrics(
            list(predictions),
            list(references),
            protocol=self._protocol(),
            include_meteor=include_meteor,
            max_reference_tokens=max_reference_tokens,
        )
