"""The console's routes: server-rendered pages (Jinja2), two JSON feeds the charts poll,
and the forms that change things (create and delete a topic, reset a group's offsets).

CSRF: every page sets a random token in a SameSite=Strict cookie and in each form;
a POST must carry both, equal, and an Origin (when the browser sends one) of this host.
Pages allow only their own scripts and styles (Content-Security-Policy), and no framing.

Every view call blocks on the broker, so it runs in Starlette's thread pool.
The app object is owned by the server; it is as thread-safe as its :class:`ClusterView`.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from kvlog.errors import AuthorizationError, KvlogError
from kvlog.ipc.cluster_reports import RESET_STRATEGIES

from .login import SESSION_COOKIE, SESSION_TTL_S, WRONG_LOGIN
from .view import ClusterView

if TYPE_CHECKING:
    from .server import Views

log = logging.getLogger("kvlog.console")

HERE = Path(__file__).parent
CSRF_COOKIE = "kvlog_csrf"
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return str(value)


def _parse_configs(text: str) -> dict[str, str]:
    """``key=value`` lines (blank lines and ``#`` comments skipped)."""
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"config line {number} is not key=value: {line!r}")
        out[key.strip()] = value.strip()
    return out


def _int_or_none(value: Any, what: str) -> int | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{what} must be a whole number, got {value!r}") from None


class LoginRequired(Exception):
    """Security is on and the request has no valid session."""


def _forbidden_hint(exc: AuthorizationError) -> str:
    """The broker's refusal names the principal, the operation, the resource and the
    ``kvlog acls add`` that would allow it; say where it came from."""
    return f"The broker refused this as your principal: {exc.message}"


def build_app(views: Views) -> Starlette:
    """The console app over ``views`` (one view per logged-in principal with security
    on; see :mod:`.login`)."""
    logins = views.logins
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["size"] = _size

    def user_of(request: Request) -> str | None:
        if logins is None:
            return None
        return logins.session_user(request.cookies.get(SESSION_COOKIE))

    def view_of(request: Request) -> ClusterView:
        """The view of the request's principal; LoginRequired without a session."""
        if logins is None:
            return views.for_user(None)
        user = user_of(request)
        if user is None:
            raise LoginRequired()
        return views.for_user(user)

    def page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
        user = context.get("user", user_of(request))
        response = templates.TemplateResponse(
            request, name, {**context, "csrf": token, "user": user}, status_code=status
        )
        if request.cookies.get(CSRF_COOKIE) != token:
            response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict")
        response.headers.update(_HEADERS)
        return response

    async def form_of(request: Request) -> FormData:
        """The POST's form, once its CSRF token and Origin check out (403 otherwise)."""
        form = await request.form()
        cookie = request.cookies.get(CSRF_COOKIE, "")
        sent = str(form.get("csrf", ""))
        if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and retry")
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
            raise HTTPException(403, f"cross-origin request from {origin} refused")
        return form

    async def overview(request: Request) -> Response:
        view = view_of(request)
        data = await run_in_threadpool(view.overview)
        return page(request, "overview.html", {"nav": "overview", **data})

    async def topics(request: Request, error: str | None = None, status: int = 200) -> Response:
        view = view_of(request)
        listed = await run_in_threadpool(view.topics)
        context = {"nav": "topics", "topics": listed, "error": error}
        return page(request, "topics.html", context, status)

    async def create_topic(request: Request) -> Response:
        form = await form_of(request)
        view = view_of(request)
        name = str(form.get("name", "")).strip()
        try:
            partitions = _int_or_none(form.get("partitions"), "partitions") or 1
            replication = _int_or_none(form.get("replication_factor"), "replication factor") or 1
            configs = _parse_configs(str(form.get("configs", "")))
            if not name:
                raise ValueError("a topic needs a name")
            await run_in_threadpool(view.create_topic, name, partitions, replication, configs)
        except AuthorizationError:
            raise  # a 403 page naming what is missing
        except (ValueError, KvlogError) as exc:
            message = exc.message if isinstance(exc, KvlogError) else str(exc)
            return await topics(request, error=message, status=400)
        return RedirectResponse(f"/topics/{quote(name, safe='')}", status_code=303)

    async def topic(request: Request) -> Response:
        view = view_of(request)
        name = request.path_params["name"]
        data = await run_in_threadpool(view.topic, name)
        return page(request, "topic.html", {"nav": "topics", "error": None, **data})

    async def delete_topic(request: Request) -> Response:
        form = await form_of(request)
        view = view_of(request)
        name = request.path_params["name"]
        if str(form.get("confirm", "")) != name:
            data = await run_in_threadpool(view.topic, name)
            error = f"type the topic's name ({name}) to confirm deleting it"
            return page(request, "topic.html", {"nav": "topics", "error": error, **data}, 400)
        await run_in_threadpool(view.delete_topic, name)
        return RedirectResponse("/topics", status_code=303)

    async def messages(request: Request) -> Response:
        view = view_of(request)
        q = request.query_params
        listed = await run_in_threadpool(view.topics)
        context: dict[str, Any] = {"nav": "messages", "topics": listed, "q": q, "result": None}
        topic_name = q.get("topic")
        if topic_name:
            try:
                timestamp = q.get("timestamp", "").strip()
                result = await run_in_threadpool(
                    lambda: view.browse(
                        topic_name,
                        _int_or_none(q.get("partition"), "partition") or 0,
                        offset=_int_or_none(q.get("offset"), "offset"),
                        timestamp_ms=_timestamp_ms(timestamp) if timestamp else None,
                        limit=_int_or_none(q.get("limit"), "limit") or 20,
                    )
                )
                context["result"] = result
            except AuthorizationError:
                raise  # a 403 page naming what is missing
            except (ValueError, KvlogError) as exc:
                context["error"] = exc.message if isinstance(exc, KvlogError) else str(exc)
        return page(request, "messages.html", context)

    async def groups(request: Request) -> Response:
        view = view_of(request)
        listed = await run_in_threadpool(view.groups)
        return page(request, "groups.html", {"nav": "groups", "groups": listed})

    async def group(request: Request) -> Response:
        view = view_of(request)
        data = await run_in_threadpool(view.group, request.path_params["group_id"])
        context = {"nav": "groups", "group": data, "plan": None, "strategies": RESET_STRATEGIES}
        return page(request, "group.html", context)

    async def reset(request: Request) -> Response:
        form = await form_of(request)
        view = view_of(request)
        group_id = request.path_params["group_id"]
        fields = {k: str(form.get(k, "")) for k in ("topic", "strategy", "value")}
        apply = form.get("action") == "apply"
        plan = None
        error = None
        try:
            value = _reset_value(fields["strategy"], fields["value"])
            plan = await run_in_threadpool(
                view.plan_reset, group_id, fields["topic"], fields["strategy"], value
            )
            if apply:
                await run_in_threadpool(view.apply_reset, group_id, plan)
        except AuthorizationError:
            raise  # a 403 page naming what is missing
        except (ValueError, KvlogError) as exc:
            error = exc.message if isinstance(exc, KvlogError) else str(exc)
        data = await run_in_threadpool(view.group, group_id)
        context = {
            "nav": "groups",
            "group": data,
            "plan": plan,
            "applied": apply and error is None,
            "fields": fields,
            "error": error,
            "strategies": RESET_STRATEGIES,
        }
        return page(request, "group.html", context, 400 if error else 200)

    async def live(request: Request) -> Response:
        view_of(request)  # a login first, with security on
        return page(request, "live.html", {"nav": "live"})

    async def api_throughput(request: Request) -> Response:
        view = view_of(request)
        return JSONResponse(await run_in_threadpool(view.throughput_sample), headers=_HEADERS)

    async def api_group(request: Request) -> Response:
        view = view_of(request)
        data = await run_in_threadpool(view.group, request.path_params["group_id"])
        return JSONResponse(data, headers=_HEADERS)

    async def login_page(request: Request, error: str | None = None, status: int = 200) -> Response:
        if logins is None:
            return RedirectResponse("/", status_code=303)
        return page(request, "login.html", {"nav": "", "error": error, "user": None}, status)

    async def login(request: Request) -> Response:
        form = await form_of(request)
        if logins is None:
            return RedirectResponse("/", status_code=303)
        user = str(form.get("user", "")).strip()
        password = str(form.get("password", ""))
        if logins.locked_out(user):
            log.warning("console: too many failed logins as %r; refusing for a minute", user)
            message = "too many failed logins for this user: wait a minute and retry"
            return await login_page(request, error=message, status=429)
        if not await run_in_threadpool(logins.check_password, user, password):
            log.info("console: refused a login as %r", user)
            return await login_page(request, error=WRONG_LOGIN, status=401)
        log.info("console: %r logged in", user)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            logins.session_cookie(user),
            max_age=SESSION_TTL_S,
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(request: Request) -> Response:
        await form_of(request)
        if logins is not None:
            user = await run_in_threadpool(logins.revoke, request.cookies.get(SESSION_COOKIE))
            if user is not None:
                log.info("console: %r logged out", user)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
        return response

    async def login_required(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse(
                {"error": "UNAUTHENTICATED", "message": "log in first"}, 401, headers=_HEADERS
            )
        return RedirectResponse("/login", status_code=303)

    async def kvlog_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, KvlogError)
        if isinstance(exc, AuthorizationError):
            message = _forbidden_hint(exc)
            if request.url.path.startswith("/api/"):
                return JSONResponse({"error": exc.code.name, "message": message}, 403)
            return page(
                request, "error.html", {"nav": "", "title": "Forbidden", "message": message}, 403
            )
        status = 404 if "UNKNOWN" in exc.code.name or "NOT_FOUND" in exc.code.name else 400
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": exc.code.name, "message": exc.message}, status)
        context = {"nav": "", "title": exc.code.name, "message": exc.message}
        return page(request, "error.html", context, status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        context = {"nav": "", "title": f"HTTP {exc.status_code}", "message": exc.detail}
        return page(request, "error.html", context, exc.status_code)

    routes = [
        Route("/", overview),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/topics", topics, methods=["GET"]),
        Route("/topics", create_topic, methods=["POST"]),
        Route("/topics/{name}", topic),
        Route("/topics/{name}/delete", delete_topic, methods=["POST"]),
        Route("/messages", messages),
        Route("/groups", groups),
        Route("/groups/{group_id}", group),
        Route("/groups/{group_id}/reset", reset, methods=["POST"]),
        Route("/live", live),
        Route("/api/throughput", api_throughput),
        Route("/api/groups/{group_id}", api_group),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={
            KvlogError: kvlog_error,
            HTTPException: http_error,
            LoginRequired: login_required,
        },
    )


def _timestamp_ms(text: str) -> int:
    """Milliseconds since the epoch, or an ISO 8601 date-time (no zone: UTC)."""
    from datetime import datetime, timezone

    if text.isdigit():
        return int(text)
    spelled = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        moment = datetime.fromisoformat(spelled)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither milliseconds nor an ISO 8601 date-time "
            "(e.g. 2026-05-01T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def _reset_value(strategy: str, text: str) -> int | None:
    if strategy == "timestamp":
        return _timestamp_ms(text.strip()) if text.strip() else None
    return _int_or_none(text, "the value")
