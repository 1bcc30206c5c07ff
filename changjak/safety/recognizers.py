"""Korean PII for pipelines built on Presidio: our detectors as recognizers, offline, our placeholders.

    from changjak.safety import recognizers
    engine = recognizers.analyzer()                      # NoOpNlpEngine: no spaCy model to download
    results = engine.analyze(text, language="ko")        # RecognizerResults: KR_RRN, PHONE_NUMBER, ...
    recognizers.anonymize(text, results).text            # '연락처는 <전화번호> 입니다'

Needs the ``safety`` extra (presidio-analyzer, presidio-anonymizer). The request path calls
:func:`changjak.safety.pii.mask` directly, which finds the same spans without Presidio's overhead;
this module is for teams whose redaction already runs on Presidio.

Each :class:`KoreanPiiRecognizer` wraps one kind of :mod:`changjak.safety.pii`, so both paths share
one set of patterns, validators and scores. Presidio's own Korean recognizers look for their context
words in spaCy lemmas, which the NoOpNlpEngine does not produce; ours read the words straight from
the text, and context passed to ``analyze(context=[...])`` still raises scores the Presidio way.
Entity names follow Presidio's (PHONE_NUMBER, CREDIT_CARD, KR_RRN …) so existing operators apply.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from typing import TYPE_CHECKING

from presidio_analyzer import AnalysisExplanation, EntityRecognizer, RecognizerResult

from changjak.errors import ConfigError
from changjak.safety import pii

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpArtifacts

LANGUAGE = "ko"
ENTITIES = {
    "rrn": "KR_RRN",
    "frn": "KR_FRN",
    "phone": "PHONE_NUMBER",
    "email": "EMAIL_ADDRESS",
    "card": "CREDIT_CARD",
    "account": "KR_BANK_ACCOUNT",
    "passport": "KR_PASSPORT",
    "driver_license": "KR_DRIVER_LICENSE",
    "brn": "KR_BRN",
    "ip": "IP_ADDRESS",
}
KINDS = {entity: kind for kind, entity in ENTITIES.items()}


class KoreanPiiRecognizer(EntityRecognizer):
    """One kind from :mod:`changjak.safety.pii` (``"phone"``, ``"rrn"`` …) as a Presidio recognizer."""

    def __init__(self, kind: str) -> None:
        if kind not in ENTITIES:
            raise ConfigError(f"unknown PII kind {kind!r}", hint=f"use one of {', '.join(ENTITIES)}")
        self.kind = kind
        super().__init__(supported_entities=[ENTITIES[kind]], name=f"Korean_{kind}",
                         supported_language=LANGUAGE, context=list(pii.CONTEXT[kind]), country_code="kr")

    def load(self) -> None:
        """Nothing to load: the patterns were compiled when :mod:`changjak.safety.pii` was imported."""

    def analyze(self, text: str, entities: list[str],
                nlp_artifacts: NlpArtifacts | None = None) -> list[RecognizerResult]:
        entity = self.supported_entities[0]
        if entities and entity not in entities:
            return []
        metadata = {RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                    RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id}
        return [RecognizerResult(entity, f.start, f.end, f.score, AnalysisExplanation(self.name, f.score),
                                 dict(metadata))
                for f in pii.scan(text, kinds=(self.kind,))]


def registry(kinds: Collection[str] = pii.KINDS) -> RecognizerRegistry:
    """A registry for language "ko" holding one recognizer per kind, to extend with your own."""
    from presidio_analyzer import RecognizerRegistry

    return RecognizerRegistry([KoreanPiiRecognizer(kind) for kind in kinds], supported_languages=[LANGUAGE])


def analyzer(kinds: Collection[str] = pii.KINDS, *, min_score: float = pii.MIN_SCORE) -> AnalyzerEngine:
    """An AnalyzerEngine for Korean that runs offline: NoOpNlpEngine, our recognizers, our threshold."""
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NoOpNlpEngine

    nlp_engine = NoOpNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "noop"}])
    return AnalyzerEngine(registry=registry(kinds), nlp_engine=nlp_engine, supported_languages=[LANGUAGE],
                          default_score_threshold=min_score)


def anonymize(text: str, results: list[RecognizerResult]) -> pii.MaskResult:
    """``text`` with each result replaced by our placeholder (``<ENTITY>`` for entities we do not
    know), and how many of each kind, as :func:`changjak.safety.pii.mask` returns them."""
    from presidio_anonymizer import AnonymizerEngine, ConflictResolutionStrategy
    from presidio_anonymizer.entities import OperatorConfig

    operators = {entity: OperatorConfig("replace", {"new_value": pii.PLACEHOLDERS[kind]})
                 for kind, entity in ENTITIES.items()}
    # Trimming overlaps keeps two placeholders from being written into one span.
    done = AnonymizerEngine().anonymize(text, results, operators,
                                        conflict_resolution=ConflictResolutionStrategy.REMOVE_INTERSECTIONS)
    counts = Counter(KINDS.get(item.entity_type, item.entity_type) for item in done.items)
    return pii.MaskResult(done.text, dict(counts))


def mask(text: str, engine: AnalyzerEngine) -> pii.MaskResult:
    """:func:`changjak.safety.pii.mask` done the Presidio way: analyze with ``engine``, then anonymize."""
    return anonymize(text, engine.analyze(text, language=LANGUAGE))
