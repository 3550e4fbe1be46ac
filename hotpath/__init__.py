"""hotpath: the edge of the service — settings, the `hotpath` CLI and the `hotpath dev` supervisor.

The parts live in their own packages (cacheman, taskkit, index_worker, thumb_worker); this package
only reads configuration and starts them, so library code never reads the environment.
"""
