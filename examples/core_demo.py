"""A tour of the durable core, run by `make demo`.

Part 1 is the seed package's Quick Start, unchanged. Part 2 is an order
process with a loop of nested durable calls, an approval event carrying a
payload, and a durable timer. Every call below uses a *new* backend object on
the same directory, as a restarted process would: only what is on disk
carries the process forward.
"""

import asyncio
import tempfile
import time

from durable import (
    DiskStateStore,
    DurableBackend,
    InMemoryStateStore,
    PauseForEventException,
    TimerPause,
    make_durable,
    sleep,
    wait_for_event,
)


# --- Part 1: the seed's Quick Start -------------------------------------------
async def greet(name: str):
    print("waiting for permission to greet")
    raise PauseForEventException("allow")
    return f"hello {name}"


durable_greet = make_durable(greet)


async def quick_start():
    backend = DurableBackend(InMemoryStateStore())

    async def run_once():
        try:
            return await durable_greet("Ada", orchestration_backend=backend, instance_id="greet-1")
        except PauseForEventException as e:
            print(f"paused for event {e.event}")

    await run_once()
    backend.publish_event("greet-1", "allow")
    result = await durable_greet("Ada", orchestration_backend=backend, instance_id="greet-1")
    print(result)


# --- Part 2: an order process ---------------------------------------------------
async def reserve(item: str, qty: int) -> dict:
    print(f"  step: reserve {qty} x {item}")
    return {"item": item, "qty": qty, "price": 12.5 * qty}


async def charge(customer: str, amount: float) -> str:
    print(f"  step: charge {customer} {amount:.2f}")
    return f"receipt-{customer}-{int(amount * 100)}"


@make_durable
async def order_process(customer: str, lines: list[tuple[str, int]]):
    reserved = []
    for item, qty in lines:
        reserved.append(await reserve(item, qty))
    total = sum(r["price"] for r in reserved)
    decision = await wait_for_event("approval", timeout=24 * 3600)
    if not decision["approved"]:
        return {"status": "rejected", "by": decision["by"]}
    await sleep(1.0)  # a cooling-off period; survives restarts like any step
    receipt = await charge(customer, total)
    return {"status": "paid", "total": total, "receipt": receipt, "approved_by": decision["by"]}


def backend_for(path: str) -> DurableBackend:
    """A fresh backend object each time, as after a process restart."""
    return DurableBackend(DiskStateStore(path), signing_key="demo-signing-key")


async def order_demo():
    path = tempfile.mkdtemp(prefix="durable-demo-")
    args = ("ada", [("widget", 2), ("gadget", 1)])
    print(f"state directory: {path}")
    for attempt in range(1, 10):
        try:
            result = await order_process(*args, orchestration_backend=backend_for(path), instance_id="order-42")
        except TimerPause as pause:
            wait = max(0.0, pause.due - time.time())
            print(f"run {attempt}: sleeping on a durable timer for {wait:.2f}s")
            await asyncio.sleep(wait)
        except PauseForEventException as pause:
            print(f"run {attempt}: paused, waiting for {pause.event!r}")
            if attempt == 2:
                print("  (a manager approves)")
                backend_for(path).publish_event("order-42", "approval", {"approved": True, "by": "grace"})
        else:
            print(f"run {attempt}: completed -> {result}")
            break
    again = await order_process(*args, orchestration_backend=backend_for(path), instance_id="order-42")
    print(f"calling a completed instance returns its stored result and runs nothing: {again['receipt']}")


async def main():
    print("== Part 1: the seed Quick Start ==")
    await quick_start()
    print("\n== Part 2: an order process (loops, nested calls, event payload, timer) ==")
    await order_demo()


if __name__ == "__main__":
    asyncio.run(main())
