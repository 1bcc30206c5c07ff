"""The exception tree. Code raises these; the CLI and the HTTP layer translate them at the edge.

    ChangjakError
    ├── ConfigError              settings that cannot be used (every problem listed)
    ├── DataError                input data that cannot be read at all (bad records are rejects)
    ├── ModelSourceError         a base model that cannot be found, fetched or verified
    ├── TrainingError            training that cannot start or finish
    ├── EvaluationError          evaluation that cannot run
    │   └── GateFailed           the promotion gate said no
    ├── RegistryError            MLflow registry problems (missing model, alias, version)
    ├── BackendError             an inference backend failed or is not available here
    └── APIError                 anything the HTTP API answers with an OpenAI-shaped error
        ├── BadRequest           400 invalid_request_error
        │   └── ContentPolicyViolation  400, code content_policy_violation: the safety policy refused it
        ├── Unauthenticated      401 authentication_error
        ├── PermissionDenied     403 permission_error
        ├── NotFound             404 not_found_error
        ├── PayloadTooLarge      413 invalid_request_error
        ├── RateLimited          429 rate_limit_error (carries retry_after)
        └── ServiceUnavailable   503 service_unavailable
"""

from __future__ import annotations


class ChangjakError(Exception):
    """Base class. ``hint`` is one line telling the user what to do next."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(ChangjakError):
    def __init__(self, problems: list[str] | str, *, hint: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        head = "invalid configuration: " + "; ".join(self.problems)
        super().__init__(head, hint=hint)


class DataError(ChangjakError):
    pass


class ModelSourceError(ChangjakError):
    pass


class TrainingError(ChangjakError):
    pass


class EvaluationError(ChangjakError):
    pass


class GateFailed(EvaluationError):
    def __init__(self, failures: list[str]) -> None:
        self.failures = failures
        super().__init__("promotion gate failed: " + "; ".join(failures))


class RegistryError(ChangjakError):
    pass


class BackendError(ChangjakError):
    pass


class APIError(ChangjakError):
    status_code = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        if code is not None:
            self.code = code

    def to_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


class BadRequest(APIError):
    status_code = 400
    type = "invalid_request_error"


class ContentPolicyViolation(BadRequest):
    code = "content_policy_violation"


class Unauthenticated(APIError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(APIError):
    status_code = 403
    type = "permission_error"


class NotFound(APIError):
    status_code = 404
    type = "not_found_error"


class PayloadTooLarge(APIError):
    status_code = 413
    type = "invalid_request_error"


class RateLimited(APIError):
    status_code = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServiceUnavailable(APIError):
    status_code = 503
    type = "service_unavailable"
