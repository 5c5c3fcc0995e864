"""The search driver's parts (`autotune.search` is the driver and its command line): what Optuna
sees (`optuna_view`), opening the study (`opening`), recovery and heartbeats (`recovery`),
recording returned trials (`recorder`), the workers' start-up (`startup`), the launch loop
(`loop`) and the end-of-run lines (`end_of_run`)."""
