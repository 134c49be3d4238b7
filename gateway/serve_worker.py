"""`python -m gateway.serve_worker HOST PORT`: one worker of `fedgate serve`, fed connections by its parent
(`gateway.cli.workers`)."""

from gateway.cli.workers import worker_main

worker_main()
