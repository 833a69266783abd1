"""infleet.autoscaler"""
