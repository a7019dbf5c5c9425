"""Running things: the `wsdhq` front door, a local Ray head, job submission, the main demo job."""
