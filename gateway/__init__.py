"""infleet.gateway"""
