"""How processes talk: the world of ranks (:mod:`~fedsim.transport.world`), the shared
words (:mod:`~fedsim.transport.vocabulary`), binary frames
(:mod:`~fedsim.transport.framing`), the point-to-point relay over TCP sockets
(:mod:`~fedsim.transport.relay`), what the job's frames carry
(:mod:`~fedsim.transport.payloads`) and flat vectors of named tensors
(:mod:`~fedsim.transport.vectors`)."""
