"""Who a store tells what it does: telemetry in the service, nobody by default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from app.store import QueryObserver
    from app.store.bigquery.typed import PatchObserver
    from app.store.copies import ConflictObserver
    from app.store.supervisor import LoopObserver
    from app.store.tiered.exporter import ExportObserver


@dataclass(frozen=True)
class StoreObservers:
    """`query` is told what each query cost, `conflicts` each copy of a message that
    differs from the one stored, `exports` what a serving tier's exporter does, `loops`
    each restart of a background loop, `patches` each change of BigQuery's typed
    columns that BigQuery refused."""

    query: QueryObserver | None = None
    conflicts: ConflictObserver | None = None
    exports: ExportObserver | None = None
    loops: LoopObserver | None = None
    patches: PatchObserver | None = None


NO_OBSERVERS: Final = StoreObservers()
