"""Fill a surface, then report clicks in batches: ``python recommend_and_reward.py HOST:PORT [TOKEN]``."""

import sys

from scout_client import RewardBatcher, ScoutClient


def main() -> None:
    """Recommend for 20 users and batch one click each."""
    target = sys.argv[1] if len(sys.argv) > 1 else "localhost:50051"
    token = sys.argv[2] if len(sys.argv) > 2 else None
    with ScoutClient(target, token=token, timeout_s=2.0) as client:
        batcher = RewardBatcher(client, max_batch=500, max_delay_s=0.5)
        for user in range(20):
            slate = client.recommend(f"user-{user}", "home", 5, context={"mobile": 1.0})
            print(slate.event_id, [item.item_id for item in slate.items])
            batcher.add(slate.event_id, slate.items[0].item_id, 1.0)  # the user clicked the first item
        batcher.close()
        print(f"sent {batcher.sent} rewards, {len(batcher.failures)} refused")


if __name__ == "__main__":
    main()
