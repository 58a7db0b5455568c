"""The API's error object, raised anywhere and rendered by the HTTP layer."""


class ApiError(Exception):
    def __init__(self, status, code, message, details=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def body(self):
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def invalid_input(field, message):
    """invalid_input with the details.fields list the spec documents for it."""
    return ApiError(
        400,
        "invalid_input",
        f"invalid input in field '{field}'",
        {"fields": [{"name": field, "messages": [message]}]},
    )


def not_found(kind):
    return ApiError(404, "not_found", f"{kind} not found")


def locked(kind):
    return ApiError(423, "locked", f"{kind} is locked by a running action")


def uniqueness(field="name"):
    return ApiError(
        409, "uniqueness_error", f"{field} is already used", {"fields": [{"name": field}]}
    )
