"""`python -m billing.stripe_emulator --port 8420`: serve the offline Stripe until interrupted."""
import argparse
import logging
import sys

from aiohttp import web

from billing.stripe_emulator.server import DEFAULT_STATE_PATH, build_app, keep_in_memory, load_state, use_state_path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m billing.stripe_emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8420)
    saving = parser.add_mutually_exclusive_group()
    saving.add_argument("--state", default=DEFAULT_STATE_PATH, help="pickle file of the emulated objects")
    saving.add_argument("--in-memory", action="store_true", help="save nothing (faster writes)")
    parser.add_argument("--from-scratch", action="store_true", help="ignore the saved state")
    args = parser.parse_args(argv)
    if args.in_memory:
        keep_in_memory()
    elif args.state != DEFAULT_STATE_PATH:
        use_state_path(args.state)
    if not args.from_scratch:
        load_state()
    # localstripe reports webhook deliveries at INFO on aiohttp's access logger; requests themselves are not logged.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    state = "in memory" if args.in_memory else args.state
    print(f"Stripe emulator listening on http://{args.host}:{args.port} (state: {state})", flush=True)
    web.run_app(build_app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
