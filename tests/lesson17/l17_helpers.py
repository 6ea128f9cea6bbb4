"""Test code that lesson 17's tests run on the learner's side (the ``learner_helper`` fixture)."""


def step_log(llm, prompts, max_tokens):
    """Serve ``prompts`` on ``llm`` and log, per ``step()`` call, the order of "launch" (a forward of the model
    runner) and "wait" (a read of a launched step's sampled tokens, ``InFlightStep.token_ids``)."""
    import aios.engine.async_loop as loop
    from aios import SamplingParams

    log, runner = [], llm.model_runner
    run_model, token_ids = runner.run_model, loop.InFlightStep.token_ids

    def logged_run_model(*args, **kwargs):
        log[-1].append("launch")
        return run_model(*args, **kwargs)

    def logged_token_ids(self):
        log[-1].append("wait")
        return token_ids(self)

    runner.run_model, loop.InFlightStep.token_ids = logged_run_model, logged_token_ids
    try:
        for prompt in prompts:
            llm.add_request(list(prompt), SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
        for _ in range(10 * max_tokens + 20):
            if llm.is_finished():
                break
            log.append([])
            llm.step()
    finally:
        del runner.run_model
        loop.InFlightStep.token_ids = token_ids
    return log


def fail_one_step(llm):
    """Make the next forward of ``llm`` raise, run one ``step()``, put the forward back; returns the error's text."""
    runner = llm.model_runner

    def broken(*args, **kwargs):
        raise RuntimeError("injected failure")

    runner.run_model = broken
    try:
        llm.step()
    except RuntimeError as error:
        return str(error)
    finally:
        del runner.run_model
    return ""
