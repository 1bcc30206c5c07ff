"""Feedback on answers: rate, correct, review (``changjak.feedback``).

    POST /v1/feedback                 {request_id|completion_id, rating?, correction?, comment?, messages?}
    GET  /v1/feedback                 your key's feedback; with feedback:review, your tenant's
    GET  /v1/feedback/{id}
    POST /v1/feedback/{id}/review     {decision: accept|reject, note?}       (feedback:review)
    GET  /admin/feedback[/{id}]       the review queue of your tenant         (feedback:review)

Every text goes through the safety policy's ``feedback`` checks under the caller's tenant: a
refused one is a 400 ``content_policy_violation``; PII is stored masked; each verdict's summary
goes to the request's audit record. A ``user`` sees only its own key's feedback; someone else's,
or another tenant's, answers 404 exactly like a missing id.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from changjak.errors import BadRequest, ContentPolicyViolation, NotFound
from changjak.feedback import store
from changjak.serve.auth import FeedbackReviewer, FeedbackWriter, can_see, tenant_filter
from changjak.serve.context import Caller, context_of
from changjak.serve.deps import Safety
from changjak.serve.routes.audit import Database

router = APIRouter(tags=["feedback"])
REVIEW = "feedback:review"
RATINGS = (-1, 1, 2, 3, 4, 5)  # thumbs down / up, or 1..5 stars
_ID = r"[A-Za-z0-9._:-]{1,128}"
_BAD_TEXT = re.compile(r"[\x00\ud800-\udfff]")
_FEEDBACK_ID = re.compile(r"fb_[0-9a-f]{32}")
Status = Literal["pending", "accepted", "rejected"]


def _clean_text(value: str | None) -> str | None:
    if value is not None and _BAD_TEXT.search(value):
        raise ValueError("must not contain NUL bytes or lone surrogates")
    return value


class FeedbackMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=20_000)
    _text = field_validator("content")(_clean_text)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str | None = Field(None, pattern=f"^{_ID}$")  # X-Request-Id of the answer
    completion_id: str | None = Field(None, pattern=f"^{_ID}$")  # chatcmpl-...
    rating: int | None = None
    correction: str | None = Field(None, max_length=20_000)  # the answer as it should have been
    comment: str | None = Field(None, max_length=4_000)
    messages: list[FeedbackMessage] | None = Field(None, max_length=64)  # the conversation, for SFT export
    _text = field_validator("correction", "comment")(_clean_text)

    @model_validator(mode="after")
    def _says_something(self) -> FeedbackRequest:
        if self.rating is not None and self.rating not in RATINGS:
            raise ValueError("rating must be -1 or +1 (thumbs), or 1 to 5 (stars)")
        if self.request_id is None and self.completion_id is None:
            raise ValueError("name the answer: request_id (its X-Request-Id) or completion_id")
        if self.rating is None and not self.correction and not self.comment:
            raise ValueError("send a rating, a correction or a comment")
        return self


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["accept", "reject"]
    note: str | None = Field(None, max_length=4_000)
    _text = field_validator("note")(_clean_text)


class FeedbackItem(BaseModel):
    id: str
    object: str = "feedback"
    created: float
    tenant: str
    key_prefix: str
    principal: str | None
    request_id: str | None
    completion_id: str | None
    rating: int | None
    messages: list[dict[str, str]] | None
    correction: str | None
    comment: str | None
    safety: list[dict[str, Any]]
    status: str
    reviewed_by: str | None
    reviewed_at: float | None
    review_note: str | None


class FeedbackList(BaseModel):
    object: str = "list"
    data: list[FeedbackItem]
    has_more: bool
    next_before: float | None  # pass as ?before= for the next (older) page


@router.post("/v1/feedback", status_code=201)
async def create_feedback(body: FeedbackRequest, caller: FeedbackWriter, safety: Safety, engine: Database,
                          request: Request) -> FeedbackItem:
    """Rate or correct an answer."""
    verdicts: list[dict[str, Any]] = []

    def checked(text: str | None, where: str) -> str | None:
        if text is None:
            return None
        verdict = safety.check(text, surface="feedback", tenant=caller.tenant)
        verdicts.append({"where": where, **verdict.summary()})
        if verdict.blocked:
            _audit(request, verdicts)
            raise ContentPolicyViolation(f"The {where} was refused by the safety policy "
                                         f"({', '.join(verdict.blocked_by)}).", param=where.split("[")[0])
        return verdict.text

    messages = [{"role": m.role, "content": checked(m.content, f"messages[{i}].content")}
                for i, m in enumerate(body.messages or [])]
    correction, comment = checked(body.correction, "correction"), checked(body.comment, "comment")
    _audit(request, verdicts)
    row = await asyncio.to_thread(
        store.add, engine, tenant=caller.tenant, key_prefix=caller.key_id, principal=caller.name,
        request_id=body.request_id, completion_id=body.completion_id, rating=body.rating,
        messages=messages or None, correction=correction, comment=comment, safety=verdicts)
    return _item(row)


@router.get("/v1/feedback")
async def list_feedback(caller: FeedbackWriter, engine: Database, status: Status | None = None,
                        request_id: str | None = None, before: Annotated[float | None, Query(allow_inf_nan=False)] = None,
                        limit: Annotated[int, Query(ge=1, le=500)] = 100) -> FeedbackList:
    """Your key's feedback, newest first (with feedback:review: your tenant's)."""
    mine = None if REVIEW in caller.scopes else caller.key_id
    return await _page(engine, caller, mine, status, request_id, before, limit)


@router.get("/admin/feedback")
async def review_queue(caller: FeedbackReviewer, engine: Database,
                       status: Status | None = "pending", request_id: str | None = None,
                       before: Annotated[float | None, Query(allow_inf_nan=False)] = None, limit: Annotated[int, Query(ge=1, le=500)] = 100) -> FeedbackList:
    """Your tenant's feedback by review status (pending first of all), newest first."""
    return await _page(engine, caller, None, status, request_id, before, limit)


@router.get("/v1/feedback/{feedback_id}")
async def get_feedback(feedback_id: str, caller: FeedbackWriter, engine: Database) -> FeedbackItem:
    """One piece of feedback: your own (with feedback:review, any of your tenant's)."""
    return _item(await _visible(engine, caller, feedback_id, own_only=REVIEW not in caller.scopes))


@router.get("/admin/feedback/{feedback_id}")
async def get_feedback_for_review(feedback_id: str, caller: FeedbackReviewer, engine: Database) -> FeedbackItem:
    """One piece of feedback of your tenant."""
    return _item(await _visible(engine, caller, feedback_id, own_only=False))


@router.post("/v1/feedback/{feedback_id}/review")
async def review_feedback(feedback_id: str, body: ReviewRequest, caller: FeedbackReviewer, safety: Safety,
                          engine: Database) -> FeedbackItem:
    """Accept or reject a piece of feedback of your tenant."""
    await _visible(engine, caller, feedback_id, own_only=False)
    note = safety.mask_for_log(body.note) if body.note is not None else None
    row = await asyncio.to_thread(store.review, engine, feedback_id, reviewer=caller.name, note=note,
                                  status="accepted" if body.decision == "accept" else "rejected")
    return _item(row)


async def _visible(engine: Any, caller: Caller, feedback_id: str, *, own_only: bool) -> dict[str, Any]:
    row = await asyncio.to_thread(store.get, engine, feedback_id) if _FEEDBACK_ID.fullmatch(feedback_id) else None
    if row is None or not can_see(caller, row["tenant"]) or (own_only and row["key_prefix"] != caller.key_id):
        raise NotFound("No such feedback.", param="feedback_id", code="feedback_not_found")
    return row


async def _page(engine: Any, caller: Caller, key_prefix: str | None, status: str | None, request_id: str | None,
                before: float | None, limit: int) -> FeedbackList:
    if request_id is not None and _BAD_TEXT.search(request_id):
        raise BadRequest("Invalid 'request_id': NUL bytes and lone surrogates are not allowed.", param="request_id")
    rows = await asyncio.to_thread(store.list_, engine, tenant=tenant_filter(caller), key_prefix=key_prefix,
                                   status=status, request_id=request_id, after_time=before, limit=limit + 1)
    items = [_item(row) for row in rows[:limit]]
    more = len(rows) > limit
    return FeedbackList(data=items, has_more=more, next_before=items[-1].created if more else None)


def _audit(request: Request, verdicts: list[dict[str, Any]]) -> None:
    """Every verdict's summary goes to the request's audit record."""
    if (ctx := context_of(request)) is not None and verdicts:
        ctx.decisions["safety"] = [*ctx.decisions.get("safety", []), *verdicts]


def _item(row: dict[str, Any]) -> FeedbackItem:
    return FeedbackItem(**{k: v for k, v in row.items() if k not in ("time", "messages", "safety")},
                        created=row["time"], messages=json.loads(row["messages"]) if row["messages"] else None,
                        safety=json.loads(row["safety"]))
