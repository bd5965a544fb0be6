Scientists in Oakridge have found a new species of beetle.

The beetle was discovered in a forest near the river.

Researchers led by Maria Lopez say it is about 2 centimeters long.

They named it after the town of Oakridge.

The team plans to return to the forest next spring.

@highlight

Scientists find a new species of beetle near Oakridge

@highlight

The beetle is about 2 centimeters long

