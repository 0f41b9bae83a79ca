"""posttrain"""
