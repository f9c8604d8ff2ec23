"""`kiln sweep`: grid searches and TPE searches over a config, on Optuna, shared by many processes and machines.

    space.py    what is searched: a sweep file, --grid KEY=V1,V2 axes, a --space file; every value checked
                against the config schema before anything is written
    study.py    the Optuna study: storage (a journal file by default, any RDB URL), the queue of points, the
                atomic pop, heartbeats and the re-queue of a dead worker's trial
    worker.py   one worker process: pop a trial, train it as an ordinary run directory, report every
                validation to the pruner, tell the result
    report.py   results.csv, the console table, the plots and the best trial
    launch.py   the command: validate, start the workers, watch them, report; --resume and --status

Every point of the sweep (a grid point, or one of the --trials slots of a TPE search) is queued once as a WAITING
trial when the study is created; workers take trials only from that queue, so a grid point never runs twice
and a search never runs more than --trials trials, however many workers there are.
"""
