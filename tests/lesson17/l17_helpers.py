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


def decode_synchronisations(llm, prompts, settings, warmup: int, window: int) -> dict:
    """Serve ``prompts`` on the overlapped CUDA engine ``llm`` (``settings``: one SamplingParams keyword dict per
    prompt); once ``warmup`` decode steps in a row have run, run up to ``window`` more ``step()`` calls with
    ``torch.cuda.set_sync_debug_mode("error")`` and count every wait of the host for the GPU.

    The debug mode raises wherever torch itself reports a synchronisation: a blocking copy
    (``torch.tensor(values, device="cuda")``, ``.item()``, ``.tolist()``, ``bool()`` or ``int()`` of a GPU
    tensor, indexing with a host list), ``nonzero``, a stream synchronize. It does not see an event wait
    (``cudaEventSynchronize``), which is how the overlapped loop deliberately waits for step t-1's tokens:
    those waits are counted through ``torch.cuda.Event.synchronize``, and device-wide ones through
    ``torch.cuda.synchronize``. Waits the CUDA runtime makes on its own (``cudaFree`` when the caching
    allocator gives memory back) are visible to neither.

    Returns {"steps": each window step's num_tokens (negative: a decode step), "waits": event waits per window
    step, "waits_on_launched": window steps that waited for the step they had just launched, "device_syncs":
    torch.cuda.synchronize calls in the window, "error": None, or the first synchronising call's message with
    the innermost frames of its traceback}.
    """
    import traceback

    import torch

    from aios import SamplingParams

    for prompt, options in zip(prompts, settings):
        llm.add_request(list(prompt), SamplingParams(**options))
    decodes = 0
    for _ in range(10 * warmup + 20):
        if decodes >= warmup or llm.is_finished():
            break
        _, num_tokens = llm.step()
        decodes = decodes + 1 if num_tokens < 0 else 0
    result = {"steps": [], "waits": [], "waits_on_launched": 0, "device_syncs": 0, "error": None}
    waited, device_syncs = [], []
    event_synchronize, device_synchronize = torch.cuda.Event.synchronize, torch.cuda.synchronize

    def counted_event_synchronize(event):
        waited.append(event)
        return event_synchronize(event)

    def counted_device_synchronize(*args, **kwargs):
        device_syncs.append(1)
        return device_synchronize(*args, **kwargs)

    previous_mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.Event.synchronize, torch.cuda.synchronize = counted_event_synchronize, counted_device_synchronize
    try:
        torch.cuda.set_sync_debug_mode("error")
        for _ in range(window):
            if llm.is_finished():
                break
            waited.clear()
            _, num_tokens = llm.step()
            launched = llm.async_loop.in_flight
            result["steps"].append(num_tokens)
            result["waits"].append(len(waited))
            if launched is not None and any(event is launched.ready for event in waited):
                result["waits_on_launched"] += 1
    except RuntimeError as error:
        frames = "".join(traceback.format_tb(error.__traceback__)[-6:])
        result["error"] = f"{type(error).__name__}: {error}\n{frames}"
    finally:
        torch.cuda.set_sync_debug_mode(previous_mode)
        torch.cuda.Event.synchronize, torch.cuda.synchronize = event_synchronize, device_synchronize
    result["device_syncs"] = len(device_syncs)
    for _ in range(2000):  # serve the rest (outside the window) so the engine ends idle
        if result["error"] is not None or llm.is_finished():
            break
        llm.step()
    return result
