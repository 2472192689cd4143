"""The contract between the client and its jobs: the job folder's paths and the files written there."""
