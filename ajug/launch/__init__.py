"""Workers started for you as batch jobs (SLURM, PBS/Torque, SGE, LSF, or any command), as
many as the ready work needs: ``ajug serve JUGFILE --workers slurm``.

    policy.py    how many jobs, which to cancel, and why: decisions without I/O
    systems.py   each batch system's job script, commands and answers, as data
    drivers.py   running those commands (or an exec command) without blocking the loop
    runner.py    the glue in the coordinator's loop: tick, status, close
    options.py   the command-line options, the job directory and its token file
"""
