Scientists in Eastport have found a new species of moth.

The moth was discovered in a forest near the river.

Researchers led by Anna Price say it is about 1 centimeters long.

They named it after the town of Eastport.

The team plans to return to the forest next spring.

@highlight

Scientists find a new species of moth near Eastport

@highlight

The moth is about 1 centimeters long

