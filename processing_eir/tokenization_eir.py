"""SentencePiece tokenizer for EIR report text, and a function that trains one.

The special tokens have fixed ids in every model trained here: `<pad>` = 0, `<s>` = 1, `</s>` = 2 and
`<unk>` = 3. Training keeps text as it is, so `decode(encode(text))` returns `text` unchanged:

- Case, punctuation and digits are kept (no normalisation, `normalization_rule_name="identity"`).
  Digits are split into single-digit pieces, so "3.5 cm" becomes "3", ".", "5", "▁c", "m" (or a longer
  piece for "cm").
- Whitespace is kept as it is: runs of spaces, leading and trailing spaces are not collapsed, and a
  newline or tab is encoded with byte pieces (`<0x0A>`) unless the training text contained it.
- Characters never seen in training fall back to their UTF-8 bytes (`<0xC2>` `<0xB5>` for "µ"), so
  no text becomes `<unk>`.

The one exception is the character "▁" (U+2581) itself, which SentencePiece uses as its space marker
and therefore decodes to a space.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sentencepiece as spm
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

logger = logging.getLogger(__name__)

VOCAB_FILES_NAMES = {"vocab_file": "tokenizer.model"}

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
PAD_TOKEN_ID = 0
BOS_TOKEN_ID = 1
EOS_TOKEN_ID = 2
UNK_TOKEN_ID = 3

SUPPORTED_MODEL_TYPES = ("unigram", "bpe", "char", "word")


class EIRTokenizer(SentencePieceBackend):
    """Tokenizer for report text, backed by a SentencePiece model file (`tokenizer.model`).

    By default `__call__` and `encode` append `</s>` and add no `<s>`: `ids + [eos]` is both the encoder input for
    a clinical history and the decoder `labels`, and generation starts from `<s>` (`decoder_start_token_id`).
    Set `add_bos=True` to prepend `<s>` as well, or `add_eos=False` to add no special token at all; both
    flags are saved in `tokenizer_config.json`. `add_special_tokens=False` in a call skips both.

    Args:
        vocab_file: Path of the SentencePiece model file.
        bos_token: Beginning-of-sequence token.
        eos_token: End-of-sequence token.
        unk_token: Token for text the model cannot encode. It does not occur for models from
            `train_eir_tokenizer`, because they fall back to bytes.
        pad_token: Padding token.
        add_bos: Whether to prepend `bos_token` to each encoded sequence.
        add_eos: Whether to append `eos_token` to each encoded sequence.
        sp_model_kwargs: Keyword arguments for `sentencepiece.SentencePieceProcessor`, for example
            `{"enable_sampling": True, "alpha": 0.1}` for subword regularisation.
        clean_up_tokenization_spaces: Whether `decode` removes spaces before punctuation. Off by default,
            because it would change text such as "x ." on the round trip.

    NOTE: `AutoTokenizer.from_pretrained` returns this class only once it is registered with
    `AutoTokenizer.register`. Without that, transformers 5.25 silently converts `tokenizer.model` into a generic
    `TokenizersBackend`, which gives the same piece ids but appends no `</s>`.
    """

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | os.PathLike[str],
        bos_token: str = BOS_TOKEN,
        eos_token: str = EOS_TOKEN,
        unk_token: str = UNK_TOKEN,
        pad_token: str = PAD_TOKEN,
        add_bos: bool = False,
        add_eos: bool = True,
        sp_model_kwargs: dict[str, Any] | None = None,
        clean_up_tokenization_spaces: bool = False,
        **kwargs: Any,
    ) -> None:
        if vocab_file is None or not Path(vocab_file).is_file():
            raise ValueError(
                f"SentencePiece model file not found: vocab_file={vocab_file!r}. Pass the path of a "
                f"'{VOCAB_FILES_NAMES['vocab_file']}' written by train_eir_tokenizer or save_pretrained."
            )
        # The base class removes the dummy-prefix space from the model when `legacy=False`, which would change
        # the ids of every word at the start of a text. These models are always used as trained.
        if kwargs.pop("legacy", True) is False:
            logger.warning("EIRTokenizer ignores legacy=False and encodes with the SentencePiece model as trained.")
        # The special tokens come from `add_bos` and `add_eos` alone (see build_inputs_with_special_tokens).
        kwargs.pop("special_tokens_pattern", None)

        self.add_bos = add_bos
        self.add_eos = add_eos
        super().__init__(
            vocab_file=str(vocab_file),
            bos_token=bos_token,
            eos_token=eos_token,
            unk_token=unk_token,
            pad_token=pad_token,
            add_bos=add_bos,
            add_eos=add_eos,
            sp_model_kwargs=sp_model_kwargs or {},
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            legacy=True,
            special_tokens_pattern="none",
            **kwargs,
        )
        self._check_special_token_ids()

    def _check_special_token_ids(self) -> None:
        """Raise when padding, BOS and EOS share an id, because training and generation need to tell them apart."""
        special_ids = {"pad_token": self.pad_token_id, "bos_token": self.bos_token_id, "eos_token": self.eos_token_id}
        if len(set(special_ids.values())) != len(special_ids):
            raise ValueError(
                f"EIRTokenizer needs distinct ids for pad, bos and eos tokens, got {special_ids} from "
                f"{self.vocab_file}. Train the model with train_eir_tokenizer, which fixes pad=0, bos=1, eos=2, unk=3."
            )

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """Add `<s>` before and `</s>` after each sequence, as `add_bos` and `add_eos` request."""
        prefix = [self.bos_token_id] if self.add_bos else []
        suffix = [self.eos_token_id] if self.add_eos else []
        output = prefix + token_ids_0 + suffix
        if token_ids_1 is not None:
            output += prefix + token_ids_1 + suffix
        return output

    def get_special_tokens_mask(
        self,
        token_ids_0: list[int],
        token_ids_1: list[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        """Return 1 for each special token that `build_inputs_with_special_tokens` adds and 0 for each text token."""
        if already_has_special_tokens:
            return super().get_special_tokens_mask(
                token_ids_0=token_ids_0, token_ids_1=token_ids_1, already_has_special_tokens=True
            )
        prefix = [1] if self.add_bos else []
        suffix = [1] if self.add_eos else []
        mask = prefix + [0] * len(token_ids_0) + suffix
        if token_ids_1 is not None:
            mask += prefix + [0] * len(token_ids_1) + suffix
        return mask

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Join pieces with the SentencePiece decoder, which restores spaces and byte-fallback characters.

        Special and added tokens are copied as they are, with no space around them.
        """
        literal_tokens = set(self.all_special_tokens) | set(self._added_tokens_encoder)
        parts: list[str] = []
        pieces: list[str] = []
        for token in tokens:
            if token in literal_tokens:
                parts.append(self.sp_model.decode(pieces))
                parts.append(token)
                pieces = []
            else:
                pieces.append(token)
        parts.append(self.sp_model.decode(pieces))
        return "".join(parts)


def train_eir_tokenizer(
    texts: Iterable[str],
    output_dir: str | os.PathLike[str],
    vocab_size: int = 1000,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    user_defined_symbols: Iterable[str] = ("XXXX",),
    seed: int = 0,
) -> EIRTokenizer:
    """Train a SentencePiece model on `texts`, save it as a tokenizer folder in `output_dir` and return it.

    The same texts, arguments and sentencepiece version give the same model file: training runs on one
    thread with a fixed random seed. `vocab_size` counts every piece, including the 4 special tokens, the 256
    byte pieces and `user_defined_symbols`. When the texts support fewer pieces, the model gets fewer (logged
    at info level), so `len(tokenizer)` can be smaller than `vocab_size`.

    `user_defined_symbols` are always kept as one piece: "XXXX" is how the IU X-ray report archive marks
    de-identified words. Empty and whitespace-only texts are skipped.

    Raises:
        ValueError: for no texts, an unknown `model_type`, a `character_coverage` outside (0, 1], or a
            `vocab_size` too small for the characters of the texts.
    """
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model_type must be one of {SUPPORTED_MODEL_TYPES}, got {model_type!r}.")
    if not 0.0 < character_coverage <= 1.0:
        raise ValueError(f"character_coverage must be in (0, 1], got {character_coverage}.")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 0:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}.")
    symbols = [user_defined_symbols] if isinstance(user_defined_symbols, str) else list(user_defined_symbols)
    reserved = {PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN}
    if reserved & set(symbols):
        raise ValueError(
            f"user_defined_symbols must not contain the special tokens {sorted(reserved)}, got {symbols}."
        )

    # 1. Collect the texts, because SentencePiece reads its input once and an empty corpus fails late.
    corpus = [text for text in texts if text.strip()]
    if not corpus:
        raise ValueError("train_eir_tokenizer received no non-empty texts. Pass at least one report text.")

    # 2. Train in memory. The options keep text unchanged (see the module docstring).
    model_buffer = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus),
            model_writer=model_buffer,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            user_defined_symbols=symbols,
            pad_id=PAD_TOKEN_ID,
            bos_id=BOS_TOKEN_ID,
            eos_id=EOS_TOKEN_ID,
            unk_id=UNK_TOKEN_ID,
            pad_piece=PAD_TOKEN,
            bos_piece=BOS_TOKEN,
            eos_piece=EOS_TOKEN,
            unk_piece=UNK_TOKEN,
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            hard_vocab_limit=False,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as error:
        if "Vocabulary size is smaller than required_chars" in str(error):
            raise ValueError(
                f"vocab_size={vocab_size} is too small for the {len(corpus)} texts: it must cover the 4 special "
                f"tokens, 256 byte pieces, {len(symbols)} user-defined symbols and every distinct character. "
                f"Increase vocab_size or lower character_coverage. SentencePiece reported: {error}"
            ) from error
        raise

    # 3. Write the model file and the tokenizer folder.
    output_path = Path(output_dir)
    output_path.mkdir(parents=True, exist_ok=True)
    model_file = output_path / VOCAB_FILES_NAMES["vocab_file"]
    model_file.write_bytes(model_buffer.getvalue())
    tokenizer = EIRTokenizer(vocab_file=model_file)
    if tokenizer.vocab_size < vocab_size:
        logger.info(
            "Trained %d SentencePiece pieces, fewer than vocab_size=%d, because %d texts support no more.",
            tokenizer.vocab_size,
            vocab_size,
            len(corpus),
        )
    tokenizer.save_pretrained(output_path)
    logger.info("Saved EIR tokenizer (%d pieces, %s) to %s", tokenizer.vocab_size, model_type, output_path)
    return tokenizer


__all__ = ["EIRTokenizer", "train_eir_tokenizer"]
