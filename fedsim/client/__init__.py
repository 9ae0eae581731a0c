"""A client process (ranks 1..W-1): local DP training of the virtual clients it hosts
(:mod:`~fedsim.client.trainer`) and the loop that answers the server
(:mod:`~fedsim.client.loop`)."""
