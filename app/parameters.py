"""What a route accepts, read from the parameters it declares: unknown names are refused, not ignored.

A misspelled parameter (``POST /mnist/sample?dgit=3``) used to be dropped silently and the job ran with the
default. A route that declares the ``UnknownParameters`` dependency now answers 422 for every query
parameter or form field it does not read, naming each one (``errors[].name``) with the closest known name.

The known names are derived from the route itself, never kept in a list: every query parameter and form
field FastAPI reads for it, a parameter model's fields (by alias) and each upload included. A parameter
added later anywhere in the route's signature or dependencies (a field of an operation's model, or a shared
model of job options) is accepted by that declaration alone. The models themselves keep ``extra="ignore"``:
the worker validates the dumped parameters again, and an old job's JSON must still load there.

Two places report unknown names, so that one answer lists every problem of a request: the operation
handler raises them when everything else is valid, and the validation-error handler (``app.problems``)
puts them before pydantic's errors otherwise.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request, params
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.datastructures import FormData

from core.operations import OperationParams

#: One named problem, as in a problem's ``errors`` list.
ParamError = dict[str, str]

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


@dataclass(frozen=True)
class RouteParameters:
    """The names a route reads from the query string and from the form body (``files``: its uploads), and
    the setting that bounds each field that has one (``n`` -> ``max_n``)."""

    query: frozenset[str] = frozenset()
    form: frozenset[str] = frozenset()
    files: frozenset[str] = frozenset()
    limits: Mapping[str, str] = field(default_factory=dict)


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _dependants(sub)


def _names(fields: list[Any], limits: dict[str, str]) -> set[str]:
    """The request names of FastAPI's ``ModelField``s: a parameter model contributes its fields."""
    names: set[str] = set()
    for param in fields:
        model = param.field_info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            names |= {info.alias or name for name, info in model.model_fields.items()}
            if issubclass(model, OperationParams):
                limits.update(model.setting_limits())
        else:
            names.add(param.alias)
    return names


def route_parameters(route: APIRoute) -> RouteParameters:
    """What ``route`` reads (its dependencies included)."""
    query: set[str] = set()
    form: set[str] = set()
    limits: dict[str, str] = {}
    files: set[str] = set()
    for dependant in _dependants(route.dependant):
        query |= _names(dependant.query_params, limits)
        form |= _names(dependant.body_params, limits)
        files |= {param.alias for param in dependant.body_params if isinstance(param.field_info, params.File)}
    return RouteParameters(frozenset(query), frozenset(form), frozenset(files), limits)


def parameters_of(request: Request) -> RouteParameters | None:
    """The parameters of the route that ``request`` matched, if it is an API route."""
    route = request.scope.get("route")
    return route_parameters(route) if isinstance(route, APIRoute) else None


def _refuses_unknown(route: APIRoute) -> bool:
    return any(d.call is _refuse_unknown_dependency for d in _dependants(route.dependant))


async def _form_names(request: Request, body: object, reads_form: bool) -> list[str]:
    """The field names of the form body sent: of the form FastAPI parsed (``body``, or cached by the request),
    or, for a route that reads no form (a query operation sent ``-d digit=3``), of one parsed here."""
    if isinstance(body, FormData):
        return list(dict.fromkeys(body.keys()))
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in FORM_TYPES:
        return []
    try:
        form = await request.form()  # the request caches it: FastAPI's own parse when the route reads a form
    except Exception:  # noqa: BLE001 - a malformed body the route does not read is no reason to fail here
        return []
    if not reads_form:
        await form.close()  # parsed only for its names; nothing else reads its files
    return list(dict.fromkeys(form.keys()))


def _reason(name: str, here: frozenset[str], elsewhere: frozenset[str], where: str, send: str) -> str:
    if name in elsewhere:
        return f"unknown parameter in the {where}; send it {send}"
    close = difflib.get_close_matches(name, sorted(here | elsewhere), n=1, cutoff=0.6)
    if close:
        return f"unknown parameter; did you mean {close[0]}?"
    return f"unknown parameter (this operation takes: {', '.join(sorted(here | elsewhere)) or 'none'})"


async def unknown_parameters(request: Request, body: object = None) -> list[ParamError]:
    """Every query parameter and form field of ``request`` that its route does not read, with a reason.

    Only for routes that declare ``UnknownParameters``; others (health checks, job reads) accept anything.
    ``body``: the form FastAPI parsed, when the caller has it (the validation-error handler)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not _refuses_unknown(route):
        return []
    known = route_parameters(route)
    errors: list[ParamError] = []
    for name in dict.fromkeys(request.query_params.keys()):
        if name not in known.query:
            reason = _reason(name, known.query, known.form, "query string", "as a form field (multipart/form-data)")
            errors.append({"name": name, "in": "query", "reason": reason})
    for name in await _form_names(request, body, reads_form=bool(known.form)):
        if name not in known.form:
            reason = _reason(name, known.form, known.query, "form body", "in the query string")
            errors.append({"name": name, "in": "body", "reason": reason})
    return errors


async def _refuse_unknown_dependency(request: Request) -> list[ParamError]:
    # It only reports: a dependency is solved before the route's own parameters are validated, so raising
    # here would hide their errors. The route raises when this list is not empty.
    return await unknown_parameters(request)


#: Declare it on a route (``unknown: UnknownParameters``) and raise ``app.problems.invalid_params(unknown)``
#: first thing when it is not empty.
UnknownParameters = Annotated[list[ParamError], Depends(_refuse_unknown_dependency)]
