"""
The operator UI's Periodic page: every periodic entry (its expression in
words, zone, next and last run and its last job's state, paused), with
pause, resume, run now and delete behind the UI's CSRF protection.

L{PeriodicUIRoutes} is a base of L{procession.http.site.HTTPServer}; it
speaks to the periodic service (C{self.periodic}) only.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from procession.core.errors import InvalidRequest, PeriodicNotFound, StoreUnavailable
from procession.core.periodic import PERIODIC_NAME
from procession.http.ui.routes import Redirect, Render, _form, action, page
from procession.http.web import app

# The actions of the page's forms, and the notice each leaves.
ACTIONS = {
    "pause": "The entry is paused: its ticks pass without jobs.",
    "resume": "The entry is resumed: it runs from its next tick.",
    "run": "Pushed the entry's job now.",
    "delete": "The entry is deleted; the jobs it pushed stay.",
}


def periodic_url(name: str) -> str:
    """
    The Periodic page, scrolled to one entry.
    """
    return "/periodic#entry-" + quote(name, safe="")


class PeriodicUIRoutes:
    """
    The C{/periodic} pages of the operator UI.
    """

    periodic: Any = None

    def _periodic_service(self) -> Any:
        if self.periodic is None:
            raise StoreUnavailable("This server runs no periodic service.")
        return self.periodic

    @app.route("/periodic", methods=["GET"])
    @page
    async def ui_periodic(self, request: Any) -> Render:
        """
        Every periodic entry, by name.
        """
        entries = await self._periodic_service().list()
        done = _form(request, "done")
        return Render(
            "periodic.html",
            {
                "entries": entries,
                "done": ACTIONS.get(done or ""),
                "title": "Periodic",
                "section": "periodic",
                "refresh": True,
            },
        )

    @app.route("/periodic/<name>/delete", methods=["GET"])
    @page
    async def ui_periodic_delete_confirm(self, request: Any, name: str) -> Render:
        """
        Ask before deleting an entry.
        """
        entry = await self._periodic_service().get(self._name(name))
        detail = "Its ticks stop; the jobs it pushed stay."
        if entry["source"] == "file":
            detail += (
                " It comes from the --periodic file: the next reload of the "
                "file (SIGHUP, a restart) brings it back."
            )
        return Render(
            "confirm.html",
            {
                "title": "Delete?",
                "section": "periodic",
                "question": f"Delete periodic entry {name}?",
                "detail": detail,
                "target": f"/periodic/{quote(name, safe='')}",
                "fields": {"action": "delete"},
                "button": "Delete the entry",
                "back": periodic_url(name),
                "danger": True,
            },
        )

    @app.route("/periodic/<name>", methods=["POST"])
    @action
    async def ui_periodic_action(self, request: Any, name: str) -> Redirect:
        """
        Pause, resume, run now or (confirmed) delete an entry.
        """
        service = self._periodic_service()
        name = self._name(name)
        verb = _form(request, "action")
        if verb not in ACTIONS:
            raise InvalidRequest("Unknown action.", field="action")
        if verb == "pause":
            await service.set_paused(name, True)
        elif verb == "resume":
            await service.set_paused(name, False)
        elif verb == "run":
            await service.run_now(name)
        else:
            if _form(request, "confirmed") != "yes":
                raise InvalidRequest("A delete must be confirmed.")
            await service.delete(name)
            return Redirect(f"/periodic?done={verb}")
        return Redirect(f"/periodic?done={verb}#entry-" + quote(name, safe=""))

    @staticmethod
    def _name(name: str) -> str:
        if not PERIODIC_NAME.match(name):
            raise PeriodicNotFound(f"There is no periodic entry {name!r}.", name=name)
        return name
