from durable import make_durable, wait_for_event


@make_durable
async def approval(amount: int):
    answer = await wait_for_event("approve", user="operator", title="Approve the expense")
    return {"amount": amount, "answer": answer}
